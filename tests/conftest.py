"""Test-suite set-up shared by every test file.

Test helpers are importable both as ``tests.<module>`` and as ``<module>``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Never let botocore look for instance credentials at the EC2 metadata address (169.254.169.254):
# tests talk to loopback only. Subprocesses (vxmirror serve) inherit this.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)


def pytest_sessionstart(session: object) -> None:
    """The suite needs ../shared beside the checkout and tshark: missing either is a set-up error,
    not a reason to skip the tests that use them."""
    import shutil

    from zeeklogs import ZEEK_DIR

    problems = []
    if not ZEEK_DIR.is_dir():
        problems.append(f"the shared Zeek captures are not at {ZEEK_DIR}")
    if shutil.which("tshark") is None:
        problems.append("tshark is not installed (make test installs it)")
    if problems:
        raise SystemExit("test set-up incomplete: " + "; ".join(problems))
