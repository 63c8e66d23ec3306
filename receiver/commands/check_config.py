"""``vxmirror check-config FILE``: validate a config file without starting anything."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "check-config",
        help="validate a config file and exit (status 0: valid, 2: invalid)",
        description="Validate a vxmirror TOML config file; errors name the file, the key and the problem.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when the file is valid")
    return p


def run(args: argparse.Namespace) -> int:
    from ..config.file import load_config
    from ..config.schema import ConfigError

    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        print(f"invalid: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        kinds = ", ".join(getattr(s, "name", type(s).__name__) for s in cfg.forwarder_specs) or "defaults"
        print(
            f"ok: {args.file}: listen {', '.join(cfg.listen.addresses)}; metrics {cfg.metrics.listen}; "
            f"data_dir {cfg.data_dir}; workers {cfg.listen.workers or 'default'}; forwarders {kinds}"
        )
    return 0
