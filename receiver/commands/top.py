"""``vxmirror top``: live rates, drops, flows, forwarders and top talkers of a running service."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "top",
        help="live terminal view of a running vxmirror serve (reads its metrics endpoint)",
        description="Show packet and byte rates, drops by reason, kernel drops, active flows, forwarders, "
        "workers and top talkers of a running service, refreshed every --interval seconds.",
    )
    p.add_argument(
        "--metrics",
        default="127.0.0.1:9109",
        metavar="HOST:PORT",
        help="the service's metrics address (default 127.0.0.1:9109)",
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--once", action="store_true", help="print one frame (after one interval) and exit")
    return p


def run(args: argparse.Namespace) -> int:
    import sys

    from ..replay import parse_hostport
    from ..top import run as top

    try:
        host, port = parse_hostport(args.metrics)
    except ValueError as exc:
        print(f"vxmirror top: --metrics: {exc}", file=sys.stderr)
        return 2
    if args.interval <= 0:
        print("vxmirror top: --interval must be positive", file=sys.stderr)
        return 2
    return top(host, port, interval=args.interval, once=args.once)
