"""Test-suite set-up shared by every test file.

Test helpers are importable both as ``tests.<module>`` and as ``<module>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)
