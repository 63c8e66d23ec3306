"""``vxmirror extract``: one flow's frames from the pcap files, through their indexes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "extract",
        help="write one flow's frames from the pcap files to a pcap (using the files' indexes)",
        description="Find a flow (by the community_id of its record, or by its endpoints) in the indexes "
        "beside the pcap files, the file being written included, and write its frames in time order.",
    )
    p.add_argument("--data-dir", metavar="DIR", help="the service's data directory (its pcap/ is read)")
    p.add_argument("--pcap-dir", metavar="DIR", help="the pcap directory itself (default: DATA_DIR/pcap)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--community-id", metavar="ID", help="the flow record's community_id")
    who.add_argument("--flow", metavar="'SRC:PORT DST:PORT PROTO'", help="the flow's endpoints (either order)")
    p.add_argument("--vni", type=int, help="only the flow in this VNI (mirror session)")
    p.add_argument("--from", dest="t_from", type=float, metavar="T", help="frames at or after T (epoch seconds)")
    p.add_argument("--to", dest="t_to", type=float, metavar="T", help="frames at or before T (epoch seconds)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.pcap")
    return p


def run(args: argparse.Namespace) -> int:
    from forwarders.pcap_extract import extract, flow_community_id

    if not args.pcap_dir and not args.data_dir:
        print("extract: give --data-dir or --pcap-dir", file=sys.stderr)
        return 2
    pcap_dir = Path(args.pcap_dir) if args.pcap_dir else Path(args.data_dir) / "pcap"
    if not pcap_dir.is_dir():
        print(f"extract: {pcap_dir}: no such directory", file=sys.stderr)
        return 2
    try:
        cid = args.community_id or flow_community_id(args.flow)
        n = extract(pcap_dir, Path(args.output), cid, args.vni, args.t_from, args.t_to)
    except (ValueError, OSError) as e:
        print(f"extract: {e}", file=sys.stderr)
        return 1
    print(f"{n} frames of {cid} written to {args.output}", file=sys.stderr)
    return 0 if n else 3
