"""receiver.process.memtune: process settings applied by the CLI before numpy is imported."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_tune_limits_openblas_threads_unless_set_and_cli_does_it_before_numpy() -> None:
    code = (
        "import os, sys\n"
        "from receiver import cli\n"
        "cli.build_parser()\n"
        "assert 'numpy' not in sys.modules  # the env var only works before numpy loads\n"
        "from receiver.process import memtune\n"
        "memtune.tune()\n"
        "print(os.environ['OPENBLAS_NUM_THREADS'])\n"
    )
    assert _run(code, {"PATH": "/usr/bin:/bin"}).strip() == "1"
    assert _run(code, {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "3"}).strip() == "3"
