"""Live figures for `make run`: a status line from /metrics and one line per new flow record.

Usage: python mk/run_figures.py METRICS_PORT DATA_DIR   (Ctrl-C to stop)
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.request
from pathlib import Path


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", line)
        if m:
            key = m.group(1) + (m.group(2) or "")
            out[key] = float(m.group(3))
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3)) if m.group(2) else float(m.group(3))
    return out


def total(d: dict[str, float], name: str, contains: str = "") -> float:
    return sum(v for k, v in d.items() if k.startswith(name + "{") and contains in k) or d.get(name, 0.0)


def describe(r: dict) -> str:
    app = r.get("app") or {}
    extra = ""
    if "http" in app:
        h = app["http"][0] if isinstance(app["http"], list) and app["http"] else app["http"]
        extra = f" http {h.get('method', '')} {h.get('host', '')}{h.get('uri', '')}" if isinstance(h, dict) else ""
    elif "dns" in app:
        q = app["dns"][0] if isinstance(app["dns"], list) and app["dns"] else app["dns"]
        extra = f" dns {q.get('query', '')}" if isinstance(q, dict) else ""
    elif "tls" in app:
        extra = f" tls {app['tls'].get('sni', '')}" if isinstance(app["tls"], dict) else ""
    return (
        f"  flow vni={r.get('vni')} {r.get('transport')} {r.get('src_ip')}:{r.get('src_port')} -> "
        f"{r.get('dest_ip')}:{r.get('dest_port')} pkts {r.get('packets_in')}->/{r.get('packets_out')}<- "
        f"bytes {r.get('bytes_in')}->/{r.get('bytes_out')}<- {r.get('conn_state')} ({r.get('end_reason')}){extra}"
    )


def main() -> int:
    port, data_dir = int(sys.argv[1]), Path(sys.argv[2])
    offsets: dict[Path, int] = {}
    failures = 0
    last: tuple[float, float] | None = None
    n_records = 0
    print("live figures (Ctrl-C stops the service cleanly)", flush=True)
    while True:
        for f in sorted((data_dir / "flows").rglob("*.json*")):
            key = f.with_name(f.name.removesuffix(".part"))  # a closed file loses its .part suffix
            try:
                with f.open("rb") as fh:
                    fh.seek(offsets.get(key, 0))
                    data = fh.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1
            offsets[key] = offsets.get(key, 0) + end
            for line in data[:end].splitlines():
                try:
                    print(describe(json.loads(line)), flush=True)
                    n_records += 1
                except ValueError:
                    pass
        try:
            m = scrape(port)
        except OSError as e:
            failures += 1
            print(f"metrics unavailable: {e}", flush=True)
            if failures >= 3:
                return 1  # the service is gone
            time.sleep(1)
            continue
        failures = 0
        now, rx = time.monotonic(), total(m, "vxmirror_datagrams_received_total")
        rate = (rx - last[1]) / (now - last[0]) if last else 0.0
        last = (now, rx)
        print(
            f"[{time.strftime('%H:%M:%S')}] received {rx:.0f} ({rate:.0f}/s)  decoded "
            f"{m.get('vxmirror_packets_decoded_total', 0):.0f}  dropped {total(m, 'vxmirror_dropped_total'):.0f}  "
            f"kernel drops {total(m, 'vxmirror_kernel_drops_total'):.0f}  flows active "
            f"{m.get('vxmirror_flows_active', 0):.0f}  exported {m.get('vxmirror_flows_exported_total', 0):.0f}  "
            f"records on disk {n_records}",
            flush=True,
        )
        time.sleep(2)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
