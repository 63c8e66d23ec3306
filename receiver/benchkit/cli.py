"""Arguments shared by ``vxmirror bench`` and ``bench/harness.py``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .profiles import DEFAULT_WORK, PROFILES, SECTIONS

DEFAULT_MARGIN = 0.25


def add_arguments(p: argparse.ArgumentParser, *, out: Path, readme: Path | None, bench_dir: Path | None) -> None:
    p.add_argument("--profile", choices=sorted(PROFILES), default="full",
                   help="quick (about 5 minutes) or full (about 20 minutes on 2 cores); default full")
    p.add_argument("--only", metavar="SECTIONS", help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    p.add_argument("--skip", metavar="SECTIONS", help="comma-separated sections to leave out")
    p.add_argument("--out", type=Path, default=out, help=f"results directory (default {out})")
    p.add_argument("--readme", type=Path, default=readme,
                   help=f"Markdown file whose table is refreshed (default {readme or '<out>/README.md'})")
    p.add_argument("--no-readme", action="store_true", help="do not write the Markdown table")
    p.add_argument("--bench-dir", type=Path, default=bench_dir,
                   help="the checkout's bench/ directory (micro-benchmarks, live sweep, forwarder scripts)"
                   + (f"; default {bench_dir}" if bench_dir else "; without it those sections are skipped"))
    p.add_argument("--work", type=Path, default=DEFAULT_WORK,
                   help=f"scratch directory for generated captures (default {DEFAULT_WORK})")
    p.add_argument("--check", action="store_true",
                   help="regression guard: run the quick profile and compare with the stored figures; exit 1 "
                   "when a ratio dropped (or bytes per flow grew) by more than --margin")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                   help=f"allowed worsening for --check, a fraction (default {DEFAULT_MARGIN})")
    p.add_argument("--render", action="store_true",
                   help="only rewrite the Markdown table from <out>/latest.json (no measurement)")
    p.add_argument("--against", type=Path, help="stored results for --check (default <out>/latest.json)")


def sections(args: argparse.Namespace) -> list[str]:
    chosen = list(SECTIONS)
    if args.only:
        chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.skip:
        skip = {s.strip() for s in args.skip.split(",")}
        chosen = [s for s in chosen if s not in skip]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    return chosen


def main(args: argparse.Namespace, command: str) -> int:
    from . import harness  # heavy (engine, plots): only when a benchmark runs, not for `vxmirror --help`

    chosen = sections(args)
    if args.readme is None:
        args.readme = args.out / "README.md"
    bench_dir = args.bench_dir if args.bench_dir and args.bench_dir.is_dir() else None
    if args.render:
        if not args.readme:
            raise SystemExit("--render needs --readme")
        harness.render(args.out / "latest.json", args.readme)
        return 0
    if args.check:
        return harness.check(args.against or args.out / "latest.json", bench_dir=bench_dir, margin=args.margin,
                             sections=chosen, work=args.work)
    doc = harness.run(args.profile, args.out, bench_dir=bench_dir, readme=None if args.no_readme else args.readme,
                      sections=chosen, work=args.work, command=command)
    failed = [n for n, s in doc["sections"].items() if s["status"] == "failed"]
    return 1 if failed else 0
