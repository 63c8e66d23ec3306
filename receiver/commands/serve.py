"""``vxmirror serve``: run the live receiver (see receiver.service)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config.file import Config

log = logging.getLogger("vxmirror.serve")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="receive mirrored traffic on UDP 4789/6081 and export flow records",
        description="Receive VXLAN/GENEVE mirrored traffic, aggregate flows and hand them to the forwarders. "
        "Flags override the config file.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: built-in defaults)")
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        action="append",
        help="receive on this address (repeatable; replaces listen.addresses)",
    )
    p.add_argument("--metrics", metavar="HOST:PORT", help="/metrics and /healthz address (port 0: off)")
    p.add_argument("--data-dir", metavar="DIR", help="base directory of outputs (flows/, pcap/), spool")
    p.add_argument("--workers", metavar="N", type=int, help="worker processes (0: the default, see listen.workers)")
    p.add_argument("--log-format", choices=["json", "text"], help="log format (default: from config, json)")
    return p


def apply_overrides(cfg: Config, args: argparse.Namespace) -> Config:
    """Flags over the file, validated with the same schema (errors name the flag)."""
    from ..config.schema import from_table
    from ..listen.settings import ListenConfig, MetricsConfig, parse_hostport

    if args.listen:
        listen = {k: getattr(cfg.listen, k) for k in vars(cfg.listen)}
        listen["addresses"] = list(args.listen)
        cfg.listen = from_table(ListenConfig, listen, "--listen", "listen")
    if args.workers is not None:
        listen = {k: getattr(cfg.listen, k) for k in vars(cfg.listen)}
        listen["workers"] = args.workers
        cfg.listen = from_table(ListenConfig, listen, "--workers", "listen")
    if args.metrics is not None:
        m = {k: getattr(cfg.metrics, k) for k in vars(cfg.metrics)}
        m["listen"] = args.metrics
        cfg.metrics = from_table(MetricsConfig, m, "--metrics", "metrics")
        parse_hostport(args.metrics)
    if args.data_dir:
        cfg.data_dir = args.data_dir
    if args.log_format:
        cfg.log.format = args.log_format
    return cfg


def run(args: argparse.Namespace) -> int:
    from ..config.file import load_config
    from ..config.schema import ConfigError
    from ..process import logs

    try:
        cfg = apply_overrides(load_config(args.config), args)
    except ConfigError as e:
        print(f"vxmirror serve: config error: {e}", file=sys.stderr)
        return 2
    logs.setup(cfg.log.level, cfg.log.format)
    from ..process import sdnotify
    from ..service import serve

    notifier = sdnotify.Notifier()  # systemd Type=notify: READY/WATCHDOG/STATUS via $NOTIFY_SOCKET
    try:
        return serve(cfg, notifier if notifier.enabled else None)
    except OSError as e:
        log.error(f"cannot start: {e}", extra={"fields": {"error": str(e)}})
        return 1
