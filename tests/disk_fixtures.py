"""A small file system for tests of full disks and free-space retention: a tmpfs mounted for the
test (as root), unmounted afterwards."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


class MountRefused(RuntimeError):
    """This machine does not let the test mount a file system."""


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def size_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """``path`` as a fresh tmpfs of ``size`` (e.g. "8m"); raises MountRefused when mount is not
    permitted (not root, or no CAP_SYS_ADMIN in this namespace)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                           capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise MountRefused(str(e)) from None
    if r.returncode != 0:
        raise MountRefused(r.stderr.strip())
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path, leave: int = 0) -> Path:
    """A file in ``path`` that takes every free byte but ``leave`` (rounded to pages)."""
    filler = path / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        while True:
            room = free_bytes(path) - leave
            if room <= 0:
                break
            try:
                f.write(chunk[: min(len(chunk), room)])
            except OSError:
                break
    return filler
