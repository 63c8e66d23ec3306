"""``vxmirror replay FILE... --to HOST:PORT``: send captures as mirrored traffic."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "replay",
        help="send captures as VXLAN mirrored traffic (the load generator)",
        description="Send pcap/pcapng files as AWS mirrored traffic: tunnel datagrams (UDP 4789/6081) "
        "as they are, other frames wrapped in VXLAN with the outer source port hashed from the "
        "inner flow. Prints the counts at the end.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng files (maybe gzip-compressed)")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="where VXLAN datagrams go")
    p.add_argument(
        "--geneve-to",
        metavar="HOST:PORT",
        help="where GENEVE datagrams go (default: the --to host on 6081 when --to is on 4789)",
    )
    p.add_argument("--pps", type=float, help="rate limit, datagrams per second (default: as fast as possible)")
    p.add_argument("--loop", type=int, default=1, metavar="K", help="send the files K times (default 1)")
    p.add_argument("--vni", type=int, help="VNI of the frames wrapped in VXLAN (default 1)")
    p.add_argument("--sockets", type=int, default=8, help="outer source ports to spread flows over (default 8)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    import orjson

    from ..capture import CaptureError
    from ..replay import parse_hostport, replay

    try:
        to = parse_hostport(args.to)
        gto = parse_hostport(args.geneve_to) if args.geneve_to else None
        stats = replay(
            args.files, to=to, pps=args.pps, loop=args.loop, vni=args.vni, geneve_to=gto, sockets=args.sockets
        )
    except (ValueError, CaptureError) as exc:
        print(f"vxmirror replay: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"vxmirror replay: {exc}", file=sys.stderr)
        return 1
    if args.json:
        out = {k: getattr(stats, k) for k in ("sent", "bytes", "encapsulated", "wrapped", "truncated", "skipped")}
        out["elapsed"] = round(stats.elapsed, 6)
        print(orjson.dumps(out).decode())
    else:
        print(stats.summary())
    return 0
