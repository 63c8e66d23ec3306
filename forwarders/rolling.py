"""Rolling output files shared by the pcap and JSON-lines sinks.

Names: ``<prefix>-w<worker>-<YYYYmmddTHHMMSS>Z-<seq>.<ext>``, the UTC time the
file was opened and a sequence number that keeps growing across restarts. A
file is written as ``<name>.part``; on close it is fsynced and renamed, so a
reader never sees a half-written file under its final name. Rotation by size
and by age, whichever comes first; retention by file count, total bytes and
age, applied to this writer's closed files (prefix and worker) after every
rotation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("vxmirror.forwarders.rolling")


@dataclass
class RollPolicy:
    rotate_bytes: int
    rotate_seconds: float
    retain_files: int = 0  # 0: no limit
    retain_bytes: int = 0
    retain_seconds: float = 0.0

    @classmethod
    def of(cls, config: Any) -> RollPolicy:
        """The policy from a sink config with the same five keys (jsonl, pcap)."""
        return cls(
            config.rotate_bytes, config.rotate_seconds, config.retain_files, config.retain_bytes,
            config.retain_seconds,
        )


class RollingFile:
    """One writer's current file plus its closed predecessors in ``directory``."""

    def __init__(
        self,
        directory: Path,
        prefix: str,
        ext: str,
        worker: int,
        policy: RollPolicy,
        header: Callable[[], bytes] | None = None,
        on_closed: Callable[[Path], Path] | None = None,
        recover: Callable[[Path], int] | None = None,
        fsync: bool = True,
    ) -> None:
        self.directory = directory
        self.prefix = prefix
        self.ext = ext
        self.worker = worker
        self.policy = policy
        self.header = header
        self.on_closed = on_closed
        self.fsync = fsync
        self._fd: int | None = None
        self.path: Path | None = None  # the .part being written
        self.size = 0
        self.opened_at = 0.0
        self.closed_files = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._re = re.compile(
            rf"^{re.escape(prefix)}-w{worker}-(\d{{8}}T\d{{6}})Z-(\d+)\.{re.escape(ext)}(\.gz)?(\.part)?$"
        )
        self._seq = self._max_seq() + 1
        self._recover_parts(recover)

    # ---- names ----

    def _max_seq(self) -> int:
        best = 0
        for p in self.directory.iterdir():
            m = self._re.match(p.name)
            if m:
                best = max(best, int(m.group(2)))
        return best

    def _recover_parts(self, recover: Callable[[Path], int] | None) -> None:
        """Leftover ``.part`` files of this writer (a crash): trim to whole records, give final names."""
        for p in sorted(self.directory.iterdir()):
            m = self._re.match(p.name)
            if not m or not m.group(4):
                continue
            try:
                if recover is not None:
                    end = recover(p)
                    if end <= 0:
                        p.unlink()
                        log.warning("removed %s: nothing whole in it after an unclean stop", p)
                        continue
                    with open(p, "r+b") as f:
                        f.truncate(end)
                final = p.with_name(p.name[: -len(".part")])
                os.replace(p, final)
                log.warning("recovered %s after an unclean stop", final)
                if self.on_closed is not None:
                    self.on_closed(final)
            except OSError as e:
                log.error("cannot recover %s: %s", p, e)

    def closed(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.directory.iterdir():
            m = self._re.match(p.name)
            if m and not m.group(4):
                out.append((int(m.group(2)), p))
        out.sort()
        return out

    # ---- writing ----

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    @property
    def next_seq(self) -> int:
        """The number the next file gets."""
        return self._seq

    def open(self, now: float | None = None, name: str | None = None) -> None:
        """Open the next file; ``name``: its final name as planned (receiver/pcapkeep/plan.py)."""
        if name is not None:
            m = self._re.match(name)
            if m:
                self._seq = max(self._seq, int(m.group(2)))
            name += ".part"
        else:
            now = time.time() if now is None else now
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
            name = f"{self.prefix}-w{self.worker}-{stamp}Z-{self._seq:06d}.{self.ext}.part"
        self._seq += 1
        self.path = self.directory / name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.size = 0
        self.opened_at = time.monotonic()
        if self.header is not None:
            self.write(self.header())

    def write(self, data: bytes | memoryview) -> None:
        if self._fd is None:
            self.open()
        assert self._fd is not None
        view = memoryview(data).cast("B")
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self.size += n

    def truncate_to(self, size: int) -> None:
        """Undo a partly failed write (the file ends where it ended before)."""
        if self._fd is not None and size < self.size:
            os.ftruncate(self._fd, size)
            os.lseek(self._fd, size, os.SEEK_SET)
            self.size = size

    def due(self, extra: int = 0) -> bool:
        """Whether the open file must be rotated before ``extra`` more bytes go in."""
        if self._fd is None:
            return False
        p = self.policy
        if p.rotate_seconds > 0 and time.monotonic() - self.opened_at >= p.rotate_seconds:
            return True
        return p.rotate_bytes > 0 and self.size + extra > p.rotate_bytes

    def close(self) -> Path | None:
        """Close the open file: fsync, rename to its final name, apply retention."""
        if self._fd is None or self.path is None:
            return None
        fd, part = self._fd, self.path
        self._fd, self.path = None, None
        try:
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        final = part.with_name(part.name[: -len(".part")])
        os.replace(part, final)
        if self.fsync:
            self._fsync_dir()
        self.closed_files += 1
        if self.on_closed is not None:
            final = self.on_closed(final)
        self.retain()
        return final

    def _fsync_dir(self) -> None:
        with contextlib.suppress(OSError):
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def retain(self) -> list[Path]:
        """Delete the oldest closed files beyond the count, bytes and age limits."""
        p = self.policy
        files = []
        for _, path in self.closed():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files.append((path, st.st_size, st.st_mtime))
        removed = []
        total = sum(s for _, s, _ in files)
        now = time.time()
        while files:
            path, size, mtime = files[0]
            too_many = p.retain_files > 0 and len(files) > p.retain_files
            too_big = p.retain_bytes > 0 and total > p.retain_bytes
            too_old = p.retain_seconds > 0 and now - mtime > p.retain_seconds
            if not (too_many or too_big or too_old):
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed.append(path)
            total -= size
            files.pop(0)
        return removed


class RollingOutput:
    """``tick``, ``reopen`` and ``close`` of a sink that writes through a RollingFile
    (``self.files``): rotation on time when due, a new file on SIGHUP, the last file closed
    (fsynced and renamed) at the end."""

    files: RollingFile

    def tick(self, now: float) -> None:
        if self.files.due():
            self.files.close()

    def reopen(self) -> None:
        self.files.close()

    def close(self) -> None:
        self.files.close()
