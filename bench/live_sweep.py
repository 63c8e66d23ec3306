"""Live benchmark: the highest loss-free rate of `vxmirror serve` against a minimal C receiver.

    .venv/bin/python bench/live_sweep.py                    # full: 128, 512, 1400 bytes
    .venv/bin/python bench/live_sweep.py --quick            # 512 bytes, 1 s trials
    .venv/bin/python bench/live_sweep.py --receivers c --sizes 128
    .venv/bin/python bench/live_sweep.py --receivers "" --churn 2,10     # churn only

For each receiver (``c``: bench/c/recv_ref.c, recvmmsg batch 256, counting only, the reference;
``c_gro``: the same with UDP_GRO, so the kernel hands over coalesced datagrams; ``serve``:
``vxmirror serve`` with its default forwarders, JSON flow records and rolling pcap, and its
default worker count, one per two cores, which lets its receive thread use UDP_GRO; ``serveN``:
N workers, steered, without UDP_GRO) and each
datagram size (bytes of UDP payload: the VXLAN header and the inner frame), trials send a paced
stream from bench/c/send_ref.c (sendmmsg with UDP GSO, 64 segments per send, many inner flows)
over loopback for ``--seconds``. A trial passes when under 0.1 % of what was sent was lost:
lost = sent - counted by the receiver (for serve: its /metrics datagram counter, plus what its
pipeline dropped), cross-checked with the kernel's Udp RcvbufErrors from /proc/net/snmp. The
rate is searched: doubled from 100 k/s while trials pass (up to what the sender can offer),
then bisected. Every trial is a point of the plot (received against offered rate).

Churn (``--churn 2,10``): ``vxmirror serve`` with its default worker count, the JSON-lines
forwarder only and 2 s idle timeouts, fed by the sender's churn mode (a new inner flow every N
datagrams, each flow a DNS exchange, ``--churn-size`` bytes a datagram). A trial is loss-free when
the flow records on disk count every datagram sent (the sum of ``packets_in + packets_out`` over
the JSON-lines files, read after the flows have expired, the queues emptied and the service
stopped) within the same 0.1 %; the service's kernel-drop counter, Udp RcvbufErrors and the
records the forwarder dropped are recorded beside it. The rate of datagrams is searched as
above, from the case's target divided by ``2 ** --churn-steps``: 2-datagram flows towards
300,000 new flows/s (600 k datagrams/s), 10-datagram flows towards 1 M datagrams/s; new flows/s
is datagrams/s divided by N. The socket buffer and the receive ring (64 MiB each by default) hold
about 1 M datagrams of 128 bytes: a trial must send several times that (``--seconds 8`` in the
full profile) for a service that falls behind to lose anything.

Writes ``bench/out/live_sweep.json`` (trials, loss-free rates, ratios, machine) and
``bench/out/live_sweep.png``. All receivers run on the same machine in the same run; the
sender needs one of the cores, so on a 2-core machine the receiver has the other one. With
UDP_GRO the GSO sender's 64-segment messages cross loopback whole: the kernel work per
datagram shrinks for sender and receiver alike (on EC2 the kernel coalesces consecutive
datagrams of one mirror session instead). Kernel drops of coalesced messages count once in
RcvbufErrors however many datagrams they held: loss is taken from the counts.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
VXMIRROR = Path(sys.executable).parent / "vxmirror"
LOSS_LIMIT = 0.001


def build() -> dict[str, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    bins = {}
    for name in ("recv_ref", "send_ref"):
        src, exe = ROOT / "bench" / "c" / f"{name}.c", OUT / name
        if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
            subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
        bins[name] = exe
    return bins


def rcvbuf_errors() -> int:
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# churn payloads: the inner server port (53: DNS messages; another: opaque UDP, no parser)
CHURN_PORTS = {"dns": 53, "udp": 8125}


def send(bins: dict[str, Path], port: int, size: int, rate: float, seconds: float, churn: int = 0,
         payload: str = "dns", file: Path | None = None) -> dict[str, Any]:
    """Run the C sender; ``churn``: a new inner flow every that many datagrams (else 4096 flows in
    turn), carrying ``payload`` (``CHURN_PORTS``); ``file``: replay these payloads instead."""
    cmd = [str(bins["send_ref"]), "--to", f"127.0.0.1:{port}", "--size", str(size), "--rate", str(int(rate)),
           "--seconds", str(seconds), "--flows", "4096",
           *(["--churn", str(churn), "--churn-port", str(CHURN_PORTS[payload])] if churn else []),
           *(["--file", str(file)] if file else [])]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


METRIC = re.compile(r"^(\w+)(\{[^}]*\})? ([0-9.eE+-]+)$")


SCRAPED = {  # key -> metric (summed over its label sets)
    "received": "vxmirror_datagrams_received_total",
    "kernel_drops": "vxmirror_kernel_drops_total",
    "decoded": "vxmirror_packets_processed_total",
    "flows_active": "vxmirror_flows_active",
    "records_exported": "vxmirror_flows_exported_total",
    "forwarder_queued": "vxmirror_forwarder_queue_depth",
    "forwarder_in_flight": "vxmirror_forwarder_in_flight",
}


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = dict.fromkeys([*SCRAPED, "pipeline_drops", "forwarder_drops"], 0.0)
    key_of = {metric: key for key, metric in SCRAPED.items()}
    for line in text.splitlines():
        m = METRIC.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name in key_of:
            out[key_of[name]] += value
        elif name == "vxmirror_dropped_total" and 'place="pipeline"' in labels:
            out["pipeline_drops"] += value
        elif name == "vxmirror_dropped_total" and 'place="forwarder:' in labels:
            out["forwarder_drops"] += value
    return out


class CReceiver:
    """bench/c/recv_ref.c: plain recvmmsg (``c``, the reference), or with UDP_GRO (``c_gro``)."""

    def __init__(self, bins: dict[str, Path], gro: bool = False) -> None:
        self.bins = bins
        self.gro = gro
        self.name = "c_gro" if gro else "c"

    def trial(self, size: int, rate: float, seconds: float) -> dict[str, Any]:
        cmd = [str(self.bins["recv_ref"]), "--port", "0", *(["--gro"] if self.gro else [])]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        before = rcvbuf_errors()
        sent = send(self.bins, port, size, rate, seconds)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        got = json.loads(out.strip().splitlines()[-1])
        return {"sent": sent, "received": got["datagrams"], "rcvbuf_errors": rcvbuf_errors() - before, "extra_drops": 0}


class ServeReceiver:
    """``vxmirror serve`` with its default forwarders; ``workers`` None: the default count."""

    # the default forwarders, and no AWS look-ups: a benchmark on loopback talks to nothing else
    CONFIG = "[aws]\nenabled = false\n"

    def __init__(self, bins: dict[str, Path], workers: int | None = None) -> None:
        self.bins = bins
        self.workers = workers
        self.name = "serve" if workers is None else f"serve{workers}"

    def trial(self, size: int, rate: float, seconds: float) -> dict[str, Any]:
        with self.running() as (port, mport, _data, _proc):
            m0 = scrape(mport)
            before = rcvbuf_errors()
            sent = send(self.bins, port, size, rate, seconds)
            m1 = settle(mport, m0, sent["sent"], timeout=15)
            return {
                "sent": sent,
                "received": int(m1["received"] - m0["received"]),
                "rcvbuf_errors": rcvbuf_errors() - before,
                "kernel_drops": int(m1["kernel_drops"] - m0["kernel_drops"]),
                "extra_drops": int(m1["pipeline_drops"] - m0["pipeline_drops"]),
                "processed": int(m1["decoded"] - m0["decoded"]),
            }

    @contextlib.contextmanager
    def running(self) -> Iterator[tuple[int, int, Path, subprocess.Popen[str]]]:
        """A started ``vxmirror serve`` (metrics answering): (listen port, metrics port, data dir,
        process). Stopped with SIGTERM when the block ends (if not before), its data directory removed."""
        port, mport = free_port(), free_tcp_port()
        data = Path(tempfile.mkdtemp(prefix="vxmirror-sweep-"))
        config = data / "vxmirror.toml"
        config.write_text(self.CONFIG)
        proc = subprocess.Popen(
            [
                str(VXMIRROR),
                "serve",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics",
                f"127.0.0.1:{mport}",
                "--data-dir",
                str(data),
                "--log-format",
                "text",
                *(["--workers", str(self.workers)] if self.workers else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"},
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    scrape(mport)
                    break
                except OSError as exc:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"vxmirror serve did not start: {proc.stderr.read() if proc.stderr else ''}"
                        ) from exc
                    time.sleep(0.2)
            time.sleep(0.5)
            yield port, mport, data, proc
        finally:
            stop(proc)
            shutil.rmtree(data, ignore_errors=True)


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, and wait for the process to exit (killed after a minute)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ChurnServe(ServeReceiver):
    """``vxmirror serve`` (default workers, JSON lines only, 2 s idle timeouts) fed a new flow every
    ``per_flow`` datagrams of ``payload``; counted by what reaches the JSON-lines files."""

    CONFIG = (
        "[aws]\nenabled = false\n\n[engine]\ntcp_idle_timeout = 2.0\nudp_idle_timeout = 2.0\n"
        "other_idle_timeout = 2.0\n\n[forwarders.jsonl]\n"
    )

    def __init__(self, bins: dict[str, Path], per_flow: int, payload: str = "dns") -> None:
        super().__init__(bins)
        self.per_flow, self.payload = per_flow, payload
        self.name = f"churn{per_flow}{payload}"

    def trial(self, size: int, rate: float, seconds: float) -> dict[str, Any]:
        with self.running() as (port, mport, data, proc):
            m0 = scrape(mport)
            before = rcvbuf_errors()
            sent = send(self.bins, port, size, rate, seconds, churn=self.per_flow, payload=self.payload)
            m1 = settle(mport, m0, sent["sent"], timeout=60 + sent["sent"] / 20_000, expired=True)
            rcvbuf = rcvbuf_errors() - before
            stop(proc)  # every file closed and named
            packets, records = count_records(data / "flows")
        return {
            "sent": sent,
            "flows_sent": sent.get("flows", 0),
            "received": packets,  # datagrams counted in records on disk
            "records": records,
            "datagrams_received": int(m1["received"] - m0["received"]),
            "records_exported": int(m1["records_exported"] - m0["records_exported"]),
            "forwarder_drops": int(m1["forwarder_drops"] - m0["forwarder_drops"]),
            "kernel_drops": int(m1["kernel_drops"] - m0["kernel_drops"]),
            "rcvbuf_errors": rcvbuf,
            "extra_drops": 0,
            "open_flows_at_stop": int(m1["flows_active"]),
        }


class CaptureServe(ServeReceiver):
    """``vxmirror serve`` (default workers) fed the realistic mix (``payloads``, replayed by the
    sender), with JSON lines alone (``jsonl``), JSON lines and pcap under the default capture policy
    (``default``), or pcap keeping every frame (``everything``). Loss-free: every datagram received
    and no frame or record dropped anywhere (the pcap forwarder's queue included)."""

    CASES: ClassVar[dict[str, str]] = {
        "jsonl": "[forwarders.jsonl]\n",
        "default": "[forwarders.jsonl]\n\n[forwarders.pcap]\n",
        "everything": "[forwarders.jsonl]\n\n[forwarders.pcap]\nkeep = []\n",
    }

    def __init__(self, bins: dict[str, Path], case: str, payloads: Path) -> None:
        super().__init__(bins)
        self.case, self.payloads = case, payloads
        self.CONFIG = ServeReceiver.CONFIG + "\n" + self.CASES[case]
        self.name = f"capture-{case}"

    def trial(self, size: int, rate: float, seconds: float) -> dict[str, Any]:
        with self.running() as (port, mport, data, proc):
            m0 = scrape(mport)
            before = rcvbuf_errors()
            sent = send(self.bins, port, size, rate, seconds, file=self.payloads)
            m1 = settle(mport, m0, sent["sent"], timeout=30)
            rcvbuf = rcvbuf_errors() - before
            stop(proc)
            pcap_bytes = sum(p.stat().st_size for p in (data / "pcap").glob("*.pcap"))
        return {
            "sent": sent,
            "received": int(m1["received"] - m0["received"]),
            "rcvbuf_errors": rcvbuf,
            "kernel_drops": int(m1["kernel_drops"] - m0["kernel_drops"]),
            "forwarder_drops": int(m1["forwarder_drops"] - m0["forwarder_drops"]),
            "extra_drops": int(m1["pipeline_drops"] - m0["pipeline_drops"])
            + int(m1["forwarder_drops"] - m0["forwarder_drops"]),
            "pcap_bytes": pcap_bytes,
            "pcap_bytes_per_second": pcap_bytes / sent["seconds"],
        }


def disk_rate(directory: Path, mib: int = 1024) -> dict[str, Any]:
    """The sequential write rate of ``directory``'s file system: ``dd ... conv=fdatasync``."""
    target = directory / "dd.tmp"
    try:
        r = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mib}", "conv=fdatasync"],
                           capture_output=True, text=True, check=True)
    finally:
        target.unlink(missing_ok=True)
    m = re.search(r"^(\d+) bytes .* copied, ([0-9.]+) s", r.stderr, re.M)
    if not m:
        raise RuntimeError(f"dd: unexpected output: {r.stderr!r}")
    nbytes, secs = int(m.group(1)), float(m.group(2))
    return {"bytes": nbytes, "seconds": secs, "bytes_per_second": nbytes / secs, "command": " ".join(r.args)}


def capture_summary(results: list[dict[str, Any]], disk: dict[str, Any]) -> dict[str, Any]:
    """Loss-free rates per capture case, the pcap write rate at them against the disk's."""
    by = {r["case"]: r for r in results}
    out: dict[str, Any] = {"disk_bytes_per_second": round(disk["bytes_per_second"])}
    for case, r in by.items():
        passed = [t for t in r["trials"] if t["passed"]]
        best = max(passed, key=lambda t: t["offered"]) if passed else None
        out[case] = {"loss_free_datagrams_per_second": round(r["loss_free_rate"]),
                     "pcap_bytes_per_second_at_best": round(best["pcap_bytes_per_second"]) if best else 0,
                     "limited_by_sender": r["limited_by_sender"]}
    if "jsonl" in by and "default" in by and by["jsonl"]["loss_free_rate"]:
        ratio = by["default"]["loss_free_rate"] / by["jsonl"]["loss_free_rate"]
        out["default_vs_jsonl"] = round(ratio, 3)
        out["default_goal_met"] = ratio >= 0.95  # (the same rate, within the search's resolution)
    if "everything" in out and disk["bytes_per_second"]:
        ratio = out["everything"]["pcap_bytes_per_second_at_best"] / disk["bytes_per_second"]
        out["everything_vs_disk"] = round(ratio, 3)
        out["everything_goal_met"] = ratio >= 0.9
    return out


def settle(mport: int, m0: dict[str, float], sent: int, timeout: float, expired: bool = False) -> dict[str, float]:
    """Scrape until the counters have settled (or ``timeout`` seconds passed); the last scrape.

    Settled: the worker has reported since the sender stopped (a busy worker reports its counters
    late: they can stay at zero for seconds), nothing moved for a second, and every datagram sent
    is counted as received or dropped by the kernel, or nothing moved for five seconds (what was
    lost never counts). With ``expired``, also every flow expired, its record exported, and the
    forwarders' queues empty."""
    t0 = time.monotonic()
    last, stable_since = scrape(mport), time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(0.25)
        cur = scrape(mport)
        if cur != last:
            last, stable_since = cur, time.monotonic()
            continue
        still = time.monotonic() - stable_since
        reported = cur["received"] > m0["received"] and (cur["records_exported"] > m0["records_exported"]
                                                         or not expired)
        counted = cur["received"] - m0["received"] + cur["kernel_drops"] - m0["kernel_drops"] >= sent
        idle = not (cur["flows_active"] or cur["forwarder_queued"] or cur["forwarder_in_flight"])
        if reported and still >= 1.0 and (counted or still >= 5.0) and (idle or not expired):
            break
    return last


PACKETS_FIELD = re.compile(rb'"packets_(?:in|out)":(\d+)')


def count_records(directory: Path) -> tuple[int, int]:
    """(packets_in + packets_out summed, records) over the JSON-lines files of ``directory``."""
    packets = records = 0
    for path in sorted(directory.glob("*")):
        if not path.is_file():
            continue
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            data = f.read()
        records += data.count(b"\n")
        packets += sum(int(v) for v in PACKETS_FIELD.findall(data))
    return packets, records


def search(rx: Any, size: int, seconds: float, max_trials: int, start: float) -> dict[str, Any]:
    trials: list[dict[str, Any]] = []
    lo_ok: dict[str, Any] | None = None
    lo, hi = 0.0, None
    rate = start
    for _ in range(max_trials):
        t = rx.trial(size, rate, seconds)
        sent = t["sent"]["sent"]
        offered = sent / t["sent"]["seconds"]
        lost = max(0, sent - t["received"]) + t["extra_drops"]
        t.update(
            target=rate,
            offered=offered,
            received_rate=t["received"] / t["sent"]["seconds"],
            lost=lost,
            loss=lost / sent if sent else 1.0,
            size=size,
        )
        t["passed"] = t["loss"] < LOSS_LIMIT
        trials.append(t)
        print(
            f"  {rx.name:5} {size:5} B  target {rate:>10,.0f}/s  offered {offered:>10,.0f}/s  "
            f"received {t['received_rate']:>10,.0f}/s  loss {100 * t['loss']:.3f} %  "
            f"rcvbuf_errors {t['rcvbuf_errors']}",
            flush=True,
        )
        sender_capped = offered < 0.95 * rate
        if t["passed"]:
            if lo_ok is None or offered > lo_ok["offered"]:
                lo_ok = t
            lo = max(lo, rate)
            if sender_capped:
                break  # the sender cannot offer more: loss-free at the sender's limit
            rate = rate * 2 if hi is None else (lo + hi) / 2
        else:
            hi = rate if not sender_capped else min(rate, offered)
            rate = (lo + hi) / 2 if lo else hi / 2
        if hi is not None and lo and hi / lo < 1.08:
            break
    return {
        "size": size,
        "receiver": rx.name,
        "loss_free_rate": lo_ok["offered"] if lo_ok else 0.0,
        "limited_by_sender": bool(lo_ok and hi is None),
        "trials": trials,
    }


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rmem_max": int(Path("/proc/sys/net/core/rmem_max").read_text()),
    }


RECEIVER_LABELS = {
    "c": "C recvmmsg reference",
    "c_gro": "C recvmmsg with UDP_GRO",
    "serve": "vxmirror serve (default workers)",
}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Received against offered rate, a panel per datagram size (sweep) or per churn case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r.get("per_flow", 0), r.get("payload", ""), r["size"]) for r in results})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (per_flow, payload, size) in zip(axes[0], panels):
        top, unit = 0.0, "new flows/s" if per_flow else "datagrams/s"
        for r in results:
            if (r.get("per_flow", 0), r.get("payload", ""), r["size"]) != (per_flow, payload, size):
                continue
            scale = 1e3 * (per_flow or 1)
            pts = sorted((t["offered"] / scale, t["received_rate"] / scale) for t in r["trials"])
            top = max(top, *(p[0] for p in pts))
            label = ("vxmirror serve, JSON lines, 2 s idle timeouts" if per_flow else
                     RECEIVER_LABELS.get(r["receiver"], f"vxmirror serve ({r['receiver'][5:]} workers)"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
            ax.axvline(r["loss_free_rate"] / scale, ls=":", color=ax.lines[-1].get_color())
            if per_flow and r.get("target"):
                ax.axvline(r["target"] / scale, ls="-.", color="grey", lw=0.8, label="goal")
        ax.plot([0, top], [0, top], "k--", lw=0.8, label="received = offered")
        ax.set_title(f"{per_flow} datagrams a flow ({payload}), {size} bytes" if per_flow else f"{size}-byte datagrams")
        ax.set_xlabel(f"offered, k {unit}")
        ax.set_ylabel(f"k {unit} counted in records on disk" if per_flow else f"received, k {unit}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Loopback: received against offered rate (dotted: highest loss-free rate)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# churn cases: datagrams a flow -> the goal in datagrams/s (issue 14: 300 k new flows/s of
# 2-datagram flows, 1 M datagrams/s of 10-datagram flows)
CHURN_TARGETS = {2: 600_000, 10: 1_000_000}
DEFAULT_CHURN_TARGET = 1_000_000


def churn_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per churn case: loss-free datagrams/s and new flows/s, and whether the goal was reached."""
    out = {}
    for r in results:
        n, goal, payload = r["per_flow"], r["target"], r.get("payload", "dns")
        passed = [t for t in r["trials"] if t["passed"]]
        best = max(passed, key=lambda t: t["offered"]) if passed else None
        out[f"{n}-{payload}"] = {
            "datagrams_per_flow": n,
            "payload": payload,
            "size": r["size"],
            "loss_free_datagrams_per_second": round(r["loss_free_rate"]),
            "loss_free_flows_per_second": round(r["loss_free_rate"] / n),
            "goal_datagrams_per_second": goal,
            "goal_flows_per_second": round(goal / n),
            # a trial at the goal's rate passed (a paced trial offers a hair below its target; one
            # whose sender could not keep up offers less and does not count)
            "goal_met": any(t["offered"] >= 0.98 * goal for t in passed),
            "records_at_best": best["records"] if best else 0,
            "lowest_lossy_offered": min((t["offered"] for t in r["trials"] if not t["passed"]), default=None),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,512,1400")
    ap.add_argument(
        "--receivers",
        default="c,c_gro,serve,serve2",
        help="c (plain recvmmsg), c_gro (with UDP_GRO), serve (default workers), serve1, serve2 (N workers); "
        "empty: none (churn only)",
    )
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--max-trials", type=int, default=8)
    ap.add_argument("--start", type=float, default=100_000)
    ap.add_argument("--quick", action="store_true", help="512 bytes only, 1 s trials, 5 trials each")
    ap.add_argument("--churn", default="", help="churn cases: datagrams a flow and the payload, comma-separated: "
                    "N:dns (DNS queries and responses) or N:udp (opaque UDP), e.g. 2:dns,10:udp; N alone: dns")
    ap.add_argument("--churn-size", type=int, default=128, help="bytes of each churn datagram (default 128)")
    ap.add_argument("--churn-steps", type=int, default=3,
                    help="each churn search starts at its goal / 2**steps and doubles (default 3)")
    ap.add_argument("--capture", default="", help="capture cases on the realistic mix: jsonl, default, everything "
                    "(comma-separated); the data directory's disk rate is measured with dd first")
    ap.add_argument("--capture-packets", type=int, default=300_000, help="packets of the realistic mix replayed")
    ap.add_argument("--out", type=Path, default=OUT / "live_sweep.json")
    ap.add_argument("--plot", type=Path, default=OUT / "live_sweep.png")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.seconds, args.max_trials = "512", 1.0, 5
    bins = build()
    makers: dict[str, Any] = {
        "c": CReceiver,
        "c_gro": lambda b: CReceiver(b, gro=True),
        "serve": ServeReceiver,
        "serve1": lambda b: ServeReceiver(b, workers=1),
        "serve2": lambda b: ServeReceiver(b, workers=2),
    }
    results: list[dict[str, Any]] = []
    churned: list[dict[str, Any]] = []
    t0 = time.time()
    errors = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    receivers = [n for n in args.receivers.split(",") if n]
    for size in (int(s) for s in args.sizes.split(",")) if receivers else ():
        for name in receivers:
            try:
                results.append(search(makers[name](bins), size, args.seconds, args.max_trials, args.start))
            except (subprocess.SubprocessError, RuntimeError, OSError, ValueError) as exc:
                print(f"  {name} {size} B: failed: {exc}", flush=True)
                errors.append({"receiver": name, "size": size, "error": str(exc)})
            args.out.with_suffix(".partial.json").write_text(json.dumps(results, indent=1))
    for case in (c for c in args.churn.split(",") if c):
        per_flow, payload = int(case.partition(":")[0]), case.partition(":")[2] or "dns"
        goal = CHURN_TARGETS.get(per_flow, DEFAULT_CHURN_TARGET)
        try:
            r = search(ChurnServe(bins, per_flow, payload), args.churn_size, args.seconds, args.max_trials,
                       goal / 2**args.churn_steps)
            churned.append({**r, "per_flow": per_flow, "payload": payload, "target": goal})
        except (subprocess.SubprocessError, RuntimeError, OSError, ValueError) as exc:
            print(f"  churn {per_flow}: failed: {exc}", flush=True)
            errors.append({"receiver": f"churn{per_flow}{payload}", "size": args.churn_size, "error": str(exc)})
        args.out.with_suffix(".partial.json").write_text(json.dumps(results + churned, indent=1))
    captured: list[dict[str, Any]] = []
    disk: dict[str, Any] = {}
    cases = [c for c in args.capture.split(",") if c]
    if cases:
        from receiver.traffic import generate, realistic

        work = Path(tempfile.mkdtemp(prefix="vxmirror-capture-"))
        try:
            disk = disk_rate(work)
            print(f"  disk: {disk['bytes_per_second'] / 1e6:,.0f} MB/s ({disk['command']})", flush=True)
            payloads = work / "realistic.dgrams"
            n = generate(realistic(args.capture_packets)).write_datagrams(payloads)
            mean = (payloads.stat().st_size - 2 * n) / n
            for case in cases:
                try:
                    r = search(CaptureServe(bins, case, payloads), round(mean), args.seconds, args.max_trials,
                               args.start)
                    captured.append({**r, "case": case, "mean_datagram": mean})
                except (subprocess.SubprocessError, RuntimeError, OSError, ValueError) as exc:
                    print(f"  capture {case}: failed: {exc}", flush=True)
                    errors.append({"receiver": f"capture-{case}", "size": 0, "error": str(exc)})
        finally:
            shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for size in sorted({r["size"] for r in results}):
        by = {r["receiver"]: r for r in results if r["size"] == size}
        row: dict[str, Any] = {k: round(v["loss_free_rate"]) for k, v in by.items()}
        for name in ("serve", "serve1", "serve2"):
            if "c" in by and name in by and by["c"]["loss_free_rate"]:
                ratio = round(by[name]["loss_free_rate"] / by["c"]["loss_free_rate"], 3)
                row[f"{name}_ratio"] = ratio
                row[f"{name}_goal_0.8x_met"] = ratio >= 0.8
            if "c_gro" in by and name in by and by["c_gro"]["loss_free_rate"]:
                row[f"{name}_ratio_c_gro"] = round(by[name]["loss_free_rate"] / by["c_gro"]["loss_free_rate"], 3)
        row["c_limited_by_sender"] = by.get("c", {}).get("limited_by_sender")
        summary[str(size)] = row
    doc = {
        "machine": machine(),
        "seconds_per_trial": args.seconds,
        "loss_limit": LOSS_LIMIT,
        "summary": summary,
        "results": results,
        "churn": {"summary": churn_summary(churned), "results": churned},
        "capture": {"disk": disk, "summary": capture_summary(captured, disk) if disk else {}, "results": captured},
        "errors": errors,
        "wall_seconds": round(time.time() - t0, 1),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    args.out.write_text(json.dumps(doc, indent=1))
    if results or churned:
        plot(results + churned, args.plot)
    print(json.dumps({"summary": summary, "churn": doc["churn"]["summary"], "capture": doc["capture"]["summary"]},
                     indent=1))
    print(f"wrote {args.out}" + (f" and {args.plot}" if results or churned else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
