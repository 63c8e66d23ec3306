"""``vxmirror splunk check``: count the vxmirror events Splunk indexed in a time range."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "splunk", help="Splunk helpers (check: count indexed vxmirror events)",
        description="Splunk helpers over splunkd's REST API (splunk-sdk).",
    )
    ssub = p.add_subparsers(dest="splunk_command", metavar="SUBCOMMAND", required=True)
    c = ssub.add_parser(
        "check", help="count vxmirror events indexed in a time range",
        description="Run `search index=I sourcetype=S | stats count` over [--earliest, --latest) and print "
        "the count, to compare with what the forwarder says it sent (--expect N: exit 1 unless equal).",
    )
    c.add_argument("--url", required=True, help="management API, e.g. https://splunk.example:8089")
    c.add_argument("--token-file", help="Splunk authentication token (else $VXMIRROR_SPLUNK_TOKEN)")
    c.add_argument("--username", help="user name (password from --password-file or $VXMIRROR_SPLUNK_PASSWORD)")
    c.add_argument("--password-file")
    c.add_argument("--index", help="index searched (default: all the user may search)")
    c.add_argument("--sourcetype", default="vxmirror:flow")
    c.add_argument("--host", help="only events from this host field (one sensor)")
    c.add_argument("--earliest", default="-1h", help="epoch seconds or a Splunk time modifier (default -1h)")
    c.add_argument("--latest", default="now", help="epoch seconds or a Splunk time modifier (default now)")
    c.add_argument("--expect", type=int, help="exit 1 unless exactly this many events are found")
    c.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")
    c.add_argument("--ca-file", help="CA bundle for the management API certificate")
    c.add_argument("--json", action="store_true", help="print a JSON object")
    return p


def run(args: argparse.Namespace) -> int:
    from forwarders.hec_check import CheckQuery, count_events, credentials, search_string

    q = CheckQuery(
        url=args.url, index=args.index, sourcetype=args.sourcetype, host=args.host,
        earliest=args.earliest, latest=args.latest, verify_tls=not args.insecure, ca_file=args.ca_file,
    )
    try:
        auth = credentials(args.token_file, args.username, args.password_file)
        n = count_events(q, auth)
    except Exception as e:  # splunk-sdk raises several kinds; report one line, no traceback
        print(f"splunk check: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    ok = args.expect is None or n == args.expect
    if args.json:
        print(json.dumps({"count": n, "expect": args.expect, "ok": ok, "search": search_string(q),
                          "earliest": q.earliest, "latest": q.latest}))
    else:
        line = f"{n} events ({search_string(q)}; earliest={q.earliest} latest={q.latest})"
        if args.expect is not None:
            line += f"; expected {args.expect}: " + ("ok" if ok else f"MISMATCH ({n - args.expect:+d})")
        print(line)
    return 0 if ok else 1
