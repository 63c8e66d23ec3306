"""Build the mirror-session Lambda's zip: the ``mirror_sessions`` package only (boto3 and
botocore come with the Lambda Python runtime). Deterministic: sorted entries, fixed timestamps.

    python deploy/build_lambda_zip.py [OUT]      (default build/mirror_sessions.zip)
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EPOCH = (2020, 1, 1, 0, 0, 0)


def build(out: Path) -> list[str]:
    pkg = ROOT / "mirror_sessions"
    files = sorted(p for p in pkg.rglob("*") if p.is_file() and p.suffix in (".py", ".typed"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".zip.tmp")
    names = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            name = p.relative_to(ROOT).as_posix()
            info = zipfile.ZipInfo(name, EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, p.read_bytes())
            names.append(name)
    tmp.replace(out)
    return names


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "mirror_sessions.zip"
    n = build(target)
    sys.stdout.write(f"wrote {target} ({len(n)} files)\n")
