"""``vxmirror top``: a live terminal view of a running service, read from its metrics endpoint.

    snap = fetch("127.0.0.1", 9109)           # one scrape of /metrics (+ /top when served)
    ...                                       # a second later
    print(render(prev, snap))                 # one frame, as a string

Rates are differences between two scrapes divided by the time between them. What it reads
(from ``receiver/metrics.py``): ``vxmirror_datagrams_received_total`` and
``vxmirror_bytes_received_total`` per listen address, ``vxmirror_kernel_drops_total``,
``vxmirror_dropped_total{place,reason}``, ``vxmirror_packets_decoded_total``,
``vxmirror_flows_active``, ``vxmirror_flows_exported_total``, ``vxmirror_forwarder_*{forwarder}``,
``vxmirror_worker_up{worker}`` and ``vxmirror_up``.

Top talkers come from ``GET /top`` on the same port when the service serves it (JSON; the
contract is :data:`TOP_CONTRACT`); without it the view says so and shows the rest.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

TOP_CONTRACT = """\
GET /top?n=N  ->  200 application/json
{"window_seconds": 10.0,            # talkers over the last window
 "talkers": [                       # the N largest flows of the window by bytes, largest first
   {"src_ip": "10.1.2.3", "src_port": 51234, "dest_ip": "10.2.0.9", "dest_port": 443,
    "transport": "tcp", "vni": 101, "packets": 1234, "bytes": 987654}, ...]}
(404 when not served)"""

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Labels = tuple[tuple[str, str], ...]


@dataclass
class Snapshot:
    t: float  # monotonic time of the scrape
    samples: dict[str, dict[Labels, float]] = field(default_factory=dict)
    talkers: dict[str, Any] | None = None  # the /top document, None when not served

    def total(self, name: str, **match: str) -> float:
        return sum(v for lab, v in self.samples.get(name, {}).items() if _matches(lab, match))

    def by(self, name: str, key: str, **match: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for lab, v in self.samples.get(name, {}).items():
            d = dict(lab)
            if _matches(lab, match) and key in d:
                out[d[key]] += v
        return dict(out)


def _matches(lab: Labels, match: dict[str, str]) -> bool:
    d = dict(lab)
    return all(d.get(k) == v for k, v in match.items())


def parse_metrics(text: str) -> dict[str, dict[Labels, float]]:
    """Prometheus text exposition into ``{name: {labels: value}}`` (comments skipped)."""
    out: dict[str, dict[Labels, float]] = defaultdict(dict)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = tuple(
            sorted((k, v.replace('\\"', '"').replace("\\\\", "\\")) for k, v in _LABEL.findall(m.group(2) or ""))
        )
        out[m.group(1)][labels] = value
    return dict(out)


def fetch(host: str, port: int, timeout: float = 3.0, talkers: int = 10) -> Snapshot:
    """Scrape /metrics (and /top if served). Raises OSError when the endpoint cannot be read."""
    base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    with urllib.request.urlopen(base + "/metrics", timeout=timeout) as resp:
        snap = Snapshot(t=time.monotonic(), samples=parse_metrics(resp.read().decode("utf-8", "replace")))
    try:
        with urllib.request.urlopen(f"{base}/top?n={talkers}", timeout=timeout) as resp:
            doc = json.loads(resp.read())
            snap.talkers = doc if isinstance(doc, dict) else None
    except urllib.error.HTTPError:
        snap.talkers = None
    except (OSError, ValueError):
        snap.talkers = None
    return snap


def _rate(prev: Snapshot, cur: Snapshot, name: str, **match: str) -> float:
    dt = cur.t - prev.t
    if dt <= 0:
        return 0.0
    return max(0.0, cur.total(name, **match) - prev.total(name, **match)) / dt


def _si(v: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f} {suffix}{unit}"
    return f"{v:.0f} {unit}".rstrip()


def _endpoint(ip: Any, port: Any) -> str:
    ip = str(ip)
    host = f"[{ip}]" if ":" in ip else ip
    return host if port in (None, "") else f"{host}:{port}"


def render(prev: Snapshot, cur: Snapshot, width: int = 100, source: str = "") -> str:
    """One frame of the view, from two scrapes."""
    dt = cur.t - prev.t
    lines: list[str] = []
    up = cur.total("vxmirror_up")
    head = f"vxmirror top  {source}  {'UP' if up >= 1 else 'DEGRADED'}  (rates over {dt:.1f} s)"
    lines += [head[:width], "=" * min(width, len(head))]

    pps = _rate(prev, cur, "vxmirror_datagrams_received_total")
    bps = _rate(prev, cur, "vxmirror_bytes_received_total")
    dec = _rate(prev, cur, "vxmirror_packets_decoded_total")
    kdrop = _rate(prev, cur, "vxmirror_kernel_drops_total")
    lines.append(f"received   {_si(pps, 'pkt/s'):>14}   {_si(bps * 8, 'bit/s'):>14}   decoded {_si(dec, 'pkt/s')}")
    lines.append(f"kernel drops {_si(kdrop, '/s'):>12}   total {cur.total('vxmirror_kernel_drops_total'):.0f}")
    lines.append(
        f"flows active {cur.total('vxmirror_flows_active'):>12,.0f}   exported "
        f"{_si(_rate(prev, cur, 'vxmirror_flows_exported_total'), '/s')}   total "
        f"{cur.total('vxmirror_flows_exported_total'):,.0f}"
    )

    per_listen = cur.by("vxmirror_datagrams_received_total", "listen")
    if per_listen:
        lines.append("")
        lines.append(f"{'listen':<28}{'pkt/s':>14}{'bytes/s':>14}{'kernel drops/s':>16}")
        for label in sorted(per_listen):
            lines.append(
                f"{label:<28}{_si(_rate(prev, cur, 'vxmirror_datagrams_received_total', listen=label)):>14}"
                f"{_si(_rate(prev, cur, 'vxmirror_bytes_received_total', listen=label), 'B'):>14}"
                f"{_si(_rate(prev, cur, 'vxmirror_kernel_drops_total', listen=label)):>16}"
            )

    drops = []
    for lab in cur.samples.get("vxmirror_dropped_total", {}):
        d = dict(lab)
        r = _rate(prev, cur, "vxmirror_dropped_total", place=d.get("place", ""), reason=d.get("reason", ""))
        total = cur.samples["vxmirror_dropped_total"][lab]
        if total > 0:
            drops.append((r, total, d.get("place", "?"), d.get("reason", "?")))
    lines.append("")
    if drops:
        lines.append(f"{'drops: place':<30}{'reason':<26}{'/s':>12}{'total':>14}")
        for r, total, place, reason in sorted(drops, key=lambda x: (-x[0], -x[1]))[:10]:
            lines.append(f"  {place:<28}{reason:<26}{_si(r):>12}{total:>14,.0f}")
    else:
        lines.append("drops: none")

    fwd: dict[str, dict[str, str]] = defaultdict(dict)
    for name, series in cur.samples.items():
        if not name.startswith("vxmirror_forwarder_"):
            continue
        key = name[len("vxmirror_forwarder_") :]
        for lab in series:
            f = dict(lab).get("forwarder")
            if f is None:
                continue
            if key.endswith("_total"):
                fwd[f][key[:-6]] = _si(_rate(prev, cur, name, forwarder=f)) + "/s"
            else:
                fwd[f][key] = f"{series[lab]:,.0f}"
    if fwd:
        lines.append("")
        lines.append("forwarders")
        for f in sorted(fwd):
            dropped = _rate(prev, cur, "vxmirror_dropped_total", place=f"forwarder:{f}")
            items = "  ".join(f"{k} {v}" for k, v in sorted(fwd[f].items()))
            lines.append(f"  {f:<12} {items}  dropped {_si(dropped)}/s"[:width])

    workers = cur.by("vxmirror_worker_up", "worker")
    if workers:
        lines.append("")
        lines.append(
            "workers    "
            + "  ".join(
                f"{w}:{'up' if v >= 1 else 'DOWN'}" for w, v in sorted(workers.items(), key=lambda x: int(x[0]))
            )
        )

    lines.append("")
    if cur.talkers is None:
        lines.append("top talkers: not served by this vxmirror (no /top endpoint)")
    else:
        win = cur.talkers.get("window_seconds")
        lines.append(f"top talkers (last {win} s)" if win else "top talkers")
        lines.append(f"  {'source':<40}{'destination':<40}{'proto':<6}{'vni':>9}{'packets':>10}{'bytes':>12}")
        for t in cur.talkers.get("talkers", [])[:20]:
            src = _endpoint(t.get("src_ip"), t.get("src_port"))
            dst = _endpoint(t.get("dest_ip"), t.get("dest_port"))
            lines.append(
                f"  {src:<40}{dst:<40}{t.get('transport', ''):<6}{t.get('vni') or '':>9}"
                f"{t.get('packets', 0):>10,}{_si(float(t.get('bytes', 0)), 'B'):>12}"
            )
    return "\n".join(ln[:width] for ln in lines) + "\n"


def run(host: str, port: int, interval: float = 1.0, once: bool = False, out: Any = None) -> int:
    """The live loop (``once``: print one frame after one interval and return)."""
    out = out or sys.stdout
    source = f"{host}:{port}"
    try:
        prev = fetch(host, port)
    except OSError as exc:
        print(f"vxmirror top: cannot read http://{source}/metrics: {exc}", file=sys.stderr)
        return 1
    while True:
        time.sleep(interval)
        try:
            cur = fetch(host, port)
        except OSError as exc:
            print(f"vxmirror top: lost http://{source}/metrics: {exc}", file=sys.stderr)
            return 1
        width = shutil.get_terminal_size((110, 40)).columns
        frame = render(prev, cur, width=width, source=source)
        if once:
            out.write(frame)
            return 0
        out.write("\x1b[H\x1b[2J" + frame)
        out.flush()
        prev = cur
