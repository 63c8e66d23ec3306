"""Modes of the output files and directories: the service's user and group only.

pcap files hold packets as they were (payloads, credentials in clear protocols), and the JSON
lines hold the payload excerpts: they are readable by the service's user and its group (an
analyst's account can be put in the group), never by everyone. Files are made 0640 and the
directories the writers create 0750, exactly, whatever the process umask (the systemd unit's
``UMask=0027`` and ``StateDirectoryMode=0750`` give the same; tests/test_rolling_files.py checks
that both agree). Directories that already exist keep their mode.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

FILE_MODE = 0o640
DIR_MODE = 0o750


def make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents with DIR_MODE."""
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue
        os.chmod(d, DIR_MODE)  # the umask may have taken bits away


def create_private(path: Path, flags: int = os.O_WRONLY) -> int:
    """A new file (O_EXCL) with FILE_MODE; returns its descriptor."""
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
