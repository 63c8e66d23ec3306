"""Live benchmark: the highest loss-free rate of `vxmirror serve` against a minimal C receiver.

    .venv/bin/python bench/live_sweep.py                    # full: 128, 512, 1400 bytes
    .venv/bin/python bench/live_sweep.py --quick            # 512 bytes, 1 s trials
    .venv/bin/python bench/live_sweep.py --receivers c --sizes 128

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
from pathlib import Path
from typing import Any

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


def send(bins: dict[str, Path], port: int, size: int, rate: float, seconds: float) -> dict[str, Any]:
    r = subprocess.run(
        [
            str(bins["send_ref"]),
            "--to",
            f"127.0.0.1:{port}",
            "--size",
            str(size),
            "--rate",
            str(int(rate)),
            "--seconds",
            str(seconds),
            "--flows",
            "4096",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


METRIC = re.compile(r"^(\w+)(\{[^}]*\})? ([0-9.eE+-]+)$")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {"received": 0.0, "kernel_drops": 0.0, "pipeline_drops": 0.0, "decoded": 0.0}
    for line in text.splitlines():
        m = METRIC.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "vxmirror_datagrams_received_total":
            out["received"] += value
        elif name == "vxmirror_kernel_drops_total":
            out["kernel_drops"] += value
        elif name == "vxmirror_dropped_total" and 'place="pipeline"' in labels:
            out["pipeline_drops"] += value
        elif name == "vxmirror_packets_processed_total":
            out["decoded"] += value
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

    def __init__(self, bins: dict[str, Path], workers: int | None = None) -> None:
        self.bins = bins
        self.workers = workers
        self.name = "serve" if workers is None else f"serve{workers}"

    def trial(self, size: int, rate: float, seconds: float) -> dict[str, Any]:
        port, mport = free_port(), free_tcp_port()
        data = Path(tempfile.mkdtemp(prefix="vxmirror-sweep-"))
        # the default forwarders, and no AWS look-ups: a benchmark on loopback talks to nothing else
        config = data / "vxmirror.toml"
        config.write_text("[aws]\nenabled = false\n")
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
                    m0 = scrape(mport)
                    break
                except OSError as exc:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"vxmirror serve did not start: {proc.stderr.read() if proc.stderr else ''}"
                        ) from exc
                    time.sleep(0.2)
            time.sleep(0.5)
            m0 = scrape(mport)
            before = rcvbuf_errors()
            sent = send(self.bins, port, size, rate, seconds)
            # wait until the counters settle (workers report a few times a second)
            last, stable_since = scrape(mport), time.monotonic()
            while time.monotonic() - stable_since < 1.0 and time.monotonic() - stable_since < 15:
                time.sleep(0.25)
                cur = scrape(mport)
                if cur != last:
                    last, stable_since = cur, time.monotonic()
            m1 = last
            return {
                "sent": sent,
                "received": int(m1["received"] - m0["received"]),
                "rcvbuf_errors": rcvbuf_errors() - before,
                "kernel_drops": int(m1["kernel_drops"] - m0["kernel_drops"]),
                "extra_drops": int(m1["pipeline_drops"] - m0["pipeline_drops"]),
                "processed": int(m1["decoded"] - m0["decoded"]),
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            shutil.rmtree(data, ignore_errors=True)


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


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in results})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        top = 0.0
        for r in results:
            if r["size"] != size:
                continue
            pts = sorted((t["offered"], t["received_rate"]) for t in r["trials"])
            top = max(top, *(p[0] for p in pts))
            label = {
                "c": "C recvmmsg reference",
                "c_gro": "C recvmmsg with UDP_GRO",
                "serve": "vxmirror serve (default workers)",
            }.get(r["receiver"], f"vxmirror serve ({r['receiver'][5:]} workers)")
            ax.plot([p[0] / 1e3 for p in pts], [p[1] / 1e3 for p in pts], "o-", label=label)
            ax.axvline(r["loss_free_rate"] / 1e3, ls=":", color=ax.lines[-1].get_color())
        ax.plot([0, top / 1e3], [0, top / 1e3], "k--", lw=0.8, label="received = offered")
        ax.set_title(f"{size}-byte datagrams")
        ax.set_xlabel("offered, k datagrams/s")
        ax.set_ylabel("received, k datagrams/s")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Loopback: received against offered rate (dotted: highest loss-free rate)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,512,1400")
    ap.add_argument(
        "--receivers",
        default="c,c_gro,serve,serve2",
        help="c (plain recvmmsg), c_gro (with UDP_GRO), serve (default workers), serve1, serve2 (N workers)",
    )
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--max-trials", type=int, default=8)
    ap.add_argument("--start", type=float, default=100_000)
    ap.add_argument("--quick", action="store_true", help="512 bytes only, 1 s trials, 5 trials each")
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
    results = []
    t0 = time.time()
    errors = []
    for size in (int(s) for s in args.sizes.split(",")):
        for name in args.receivers.split(","):
            try:
                results.append(search(makers[name](bins), size, args.seconds, args.max_trials, args.start))
            except (subprocess.SubprocessError, RuntimeError, OSError, ValueError) as exc:
                print(f"  {name} {size} B: failed: {exc}", flush=True)
                errors.append({"receiver": name, "size": size, "error": str(exc)})
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".partial.json").write_text(json.dumps(results, indent=1))
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
        "errors": errors,
        "wall_seconds": round(time.time() - t0, 1),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    plot(results, args.plot)
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
