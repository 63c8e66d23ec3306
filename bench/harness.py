"""The benchmark harness from a checkout: ``make bench`` / ``make bench-quick`` / ``make bench-check``.

    .venv/bin/python bench/harness.py --profile full            # everything, about 20 min on 2 cores
    .venv/bin/python bench/harness.py --profile quick           # about 5 min
    .venv/bin/python bench/harness.py --check                   # quick run vs bench/results/latest.json
    .venv/bin/python bench/harness.py --profile quick --only offline,core

Writes bench/results/<timestamp>-<profile>.json, bench/results/latest.json, the plots in
bench/results/ and the table in bench/README.md. The work is done by ``receiver.benchkit``
(also behind ``vxmirror bench`` on a deployed instance); this script only points it at the
checkout's bench/ directory.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from receiver.process import memtune  # noqa: E402

memtune.tune()  # what `vxmirror` does before numpy loads: in-process figures match the product's

from receiver.benchkit import cli  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_arguments(ap, out=BENCH / "results", readme=BENCH / "README.md", bench_dir=BENCH)
    ap.add_argument("--command", help="how to describe this run in the README (e.g. the make target)")
    args = ap.parse_args()
    os.chdir(BENCH.parent)
    return cli.main(args, args.command or shlex.join(["bench/harness.py", *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
