"""Measurements that run in a fresh Python process (nothing left over from other sections)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def run_module(module: str, args: list[str], log: Any = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``python -m module args...`` (``env`` added to the environment); its last stdout line is
    the JSON result, its stderr lines go to ``log``."""
    r = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, check=True,
        env={**os.environ, **(env or {})},
    )
    if log is not None:
        for line in r.stderr.splitlines():
            log(line)
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))
