"""``vxmirror bench --profile quick|full``: the benchmark harness on this machine."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from ..benchkit import cli

CHECKOUT_BENCH = Path(__file__).resolve().parents[2] / "bench"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help="measure this machine: offline decode, core, memory per flow, forwarders, live receive",
        description="Run the benchmark harness (receiver.benchkit) and write JSON results, plots and a "
        "Markdown table. Parts that need a source checkout (micro-benchmarks, the live sweep with its C "
        "reference, the HEC/Kafka forwarder scripts) run when --bench-dir points at its bench/ directory "
        "and are skipped, with the reason, otherwise.",
    )
    out = Path("vxmirror-bench")
    cli.add_arguments(p, out=out, readme=None,
                      bench_dir=CHECKOUT_BENCH if CHECKOUT_BENCH.is_dir() else None)
    return p


def run(args: argparse.Namespace) -> int:
    return cli.main(args, "vxmirror bench " + shlex.join(sys.argv[2:]) if len(sys.argv) > 1 else "vxmirror bench")
