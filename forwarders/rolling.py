"""Rolling output files shared by the pcap and JSON-lines sinks.

Names: ``<prefix>-w<worker>-<YYYYmmddTHHMMSS>Z-<seq>.<ext>``, the UTC time the
file was opened and a sequence number that keeps growing across restarts. A
file is written as ``<name>.part``; on close it is fsynced and renamed, so a
reader never sees a half-written file under its final name. Rotation by size
and by age, whichever comes first.

A closed file ``F`` may have *sidecars*: files whose names start with ``F``'s
full name and a dot (``F.idx``, an index written when ``F`` closes), and it may
be compressed in the background to ``F.gz`` (forwarders.compress; sidecars keep
the uncompressed name). ``F``, ``F.gz`` and its sidecars are one *group*, kept
or removed together. The group of the open file (``F.part``) is never counted
nor removed.

Retention removes this writer's (prefix and worker) oldest closed groups while
there are more than ``retain_files``, more than ``retain_bytes`` (every file of
a group counts), older than ``retain_seconds``, or while the file system holds
less free space than ``retain_free_bytes`` or ``retain_free_percent`` of its
size (``statvfs``: the blocks available to unprivileged users). It runs after
every rotation, when a write finds the disk full, every second on the sink's
tick when free space is short (one ``statvfs``), and every minute in full.
What it removed is logged and counted (``removed_files``, ``removed_bytes``).

Files are created 0640 and directories 0750 (forwarders.filemodes).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from receiver.config.schema import opt

from .compress import SUFFIX, BackgroundCompressor
from .filemodes import create_private, fsync_dir, make_dirs

log = logging.getLogger("vxmirror.forwarders.rolling")

FREE_CHECK_SECONDS = 1.0  # free space is checked at most this often (one statvfs)
RETAIN_SECONDS = 60.0  # the full retention pass runs at least this often (a directory listing)
COMPRESS_WAIT_SECONDS = 5.0  # close() waits this long for pending compressions; the next start does the rest
WARN_SECONDS = 30.0
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass
class RetentionConfig:
    """The retention and compression keys of the sinks that write rolling files (jsonl, pcap)."""

    retain_files: int = opt(0, "keep at most this many closed files (0: no limit)", min=0)
    retain_bytes: int = opt(0, "keep at most this many bytes of closed files (0: no limit)", min=0)
    retain_seconds: float = opt(0.0, "delete closed files older than this (0: never)", min=0)
    retain_free_percent: float = opt(
        0.0, "delete the oldest closed files while the file system has less than this % free (0: no limit)",
        min=0, max=99,
    )
    retain_free_bytes: int = opt(
        0, "delete the oldest closed files while the file system has less than this many bytes free (0: no limit)",
        min=0,
    )
    compress: Literal["none", "gzip"] = opt("none", "compress each closed file in the background (gzip: NAME.gz)")
    compress_level: int = opt(1, "gzip level (1 fastest ... 9 smallest)", min=1, max=9)


@dataclass
class RollPolicy:
    rotate_bytes: int
    rotate_seconds: float
    retain_files: int = 0  # 0: no limit
    retain_bytes: int = 0
    retain_seconds: float = 0.0
    retain_free_percent: float = 0.0  # keep this share of the file system free (0: no limit)
    retain_free_bytes: int = 0  # keep this many bytes free (0: no limit)
    compress: str = "none"  # "none" or a key of compress.SUFFIX
    compress_level: int = 1

    @classmethod
    def of(cls, config: Any) -> RollPolicy:
        """The policy from a sink config with the same keys (jsonl, pcap); keys it lacks take
        their defaults. JSON lines' ``gzip = true`` is ``compress = "gzip"``."""
        compress = str(getattr(config, "compress", "none"))
        if compress == "none" and getattr(config, "gzip", False):
            compress = "gzip"
        return cls(
            config.rotate_bytes, config.rotate_seconds, config.retain_files, config.retain_bytes,
            config.retain_seconds, float(getattr(config, "retain_free_percent", 0.0)),
            int(getattr(config, "retain_free_bytes", 0)), compress, int(getattr(config, "compress_level", 1)),
        )

    @property
    def keeps_free(self) -> bool:
        return self.retain_free_percent > 0 or self.retain_free_bytes > 0

    @property
    def retains(self) -> bool:
        return self.keeps_free or self.retain_files > 0 or self.retain_bytes > 0 or self.retain_seconds > 0


@dataclass
class FileGroup:
    """A closed (or open) file ``base``, its compressed form and its sidecars."""

    seq: int
    base: Path  # the uncompressed final name F
    paths: list[Path] = field(default_factory=list)
    size: int = 0  # bytes (st_size) of every file
    used: int = 0  # bytes the file system gives them (st_blocks)
    mtime: float = 0.0  # of the data file (F or F.gz), else of the newest file
    data: Path | None = None
    is_open: bool = False  # F.part exists
    parts: list[Path] = field(default_factory=list)  # F.gz.part (a compression under way or cut by a crash)


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
        self._lock = threading.Lock()  # retention against the compressor's last step; counters
        self._c: Counter[str] = Counter()
        self._free_checked = -1e18
        self._retained_at = time.monotonic()
        self._warned: dict[str, float] = {}
        make_dirs(directory)
        self._re = re.compile(
            rf"^({re.escape(prefix)}-w{worker}-\d{{8}}T\d{{6}}Z-(\d+)\.{re.escape(ext)})((?:\..*)?)$"
        )
        self.compressor: BackgroundCompressor | None = None
        if policy.compress != "none":
            self.compressor = BackgroundCompressor(
                policy.compress, policy.compress_level, self._lock, f"{prefix}-w{worker}", self._compressed
            )
        self._seq = max((g.seq for g in self.groups()), default=0) + 1
        self._tidy()
        if self.compressor is not None:
            for g in self.groups():
                if not g.is_open and g.data == g.base:
                    self.compressor.submit(g.base)  # closed before compression was on, or before a crash
        self._recover_parts(recover)  # (each recovered file is submitted too)

    # ---- names ----

    def groups(self) -> list[FileGroup]:
        """This writer's file groups, oldest first (one directory listing and a stat per file)."""
        found: dict[int, FileGroup] = {}
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        for e in entries:
            m = self._re.match(e.name)
            if not m:
                continue
            seq, rest = int(m.group(2)), m.group(3)
            g = found.get(seq)
            if g is None:
                g = found[seq] = FileGroup(seq, self.directory / m.group(1))
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            path = Path(e.path)
            g.paths.append(path)
            g.size += st.st_size
            g.used += st.st_blocks * 512
            if rest == ".part":
                g.is_open = True
            elif rest.endswith(".part") and rest[: -len(".part")] in SUFFIX.values():
                g.parts.append(path)
            elif rest == "" or (rest in SUFFIX.values() and g.data is None):
                g.data = path
                g.mtime = st.st_mtime
            if g.data is None:
                g.mtime = max(g.mtime, st.st_mtime)
        return [found[k] for k in sorted(found)]

    def closed(self) -> list[tuple[int, Path]]:
        """(sequence number, data file) of each closed file, oldest first."""
        return [(g.seq, g.data) for g in self.groups() if not g.is_open and g.data is not None]

    def _tidy(self) -> None:
        """What a crash during a compression leaves: a cut ``F.gz.part`` (removed; ``F`` is whole),
        or ``F`` beside a complete ``F.gz`` (``F`` removed)."""
        for g in self.groups():
            for p in g.parts:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    log.warning("removed %s: a compression cut short by an unclean stop", p)
            if g.base in g.paths and any(g.base.with_name(g.base.name + s) in g.paths for s in SUFFIX.values()):
                with contextlib.suppress(FileNotFoundError):
                    g.base.unlink()

    def _recover_parts(self, recover: Callable[[Path], int] | None) -> None:
        """Leftover ``.part`` files of this writer (a crash): trim to whole records, give final names."""
        for g in self.groups():
            if not g.is_open:
                continue
            p = g.base.with_name(g.base.name + ".part")
            try:
                if recover is not None:
                    end = recover(p)
                    if end <= 0:
                        p.unlink()
                        log.warning("removed %s: nothing whole in it after an unclean stop", p)
                        continue
                    with open(p, "r+b") as f:
                        f.truncate(end)
                os.replace(p, g.base)
                log.warning("recovered %s after an unclean stop", g.base)
                self._closed(g.base)
            except OSError as e:
                log.error("cannot recover %s: %s", p, e)

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
            path = self.directory / (name + ".part")
        else:
            now = time.time() if now is None else now
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
            path = self.directory / f"{self.prefix}-w{self.worker}-{stamp}Z-{self._seq:06d}.{self.ext}.part"
        try:
            fd = create_private(path)
        except FileNotFoundError:  # the directory was removed under us: make it again
            make_dirs(self.directory)
            fd = create_private(path)
        self._fd, self.path, self.size = fd, path, 0
        self.opened_at = time.monotonic()
        if self.header is not None:
            try:
                self.write(self.header())
            except OSError:  # (disk full) no file without its header: the next write starts again
                if self._fd == fd:
                    self._fd, self.path = None, None
                    os.close(fd)
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise
        self._seq += 1

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` whole, or not at all: a failed write (disk full) is undone and raised,
        after retention had a chance to free space and the write one more try."""
        if self._fd is None:
            self.open()
        assert self._fd is not None
        before = self.size
        for attempt in (0, 1):
            try:
                self._write_all(data)
                return
            except OSError as e:
                self._undo(before)
                self._count("write_errors")
                if attempt == 0 and e.errno in DISK_FULL and self._fd is not None and self.make_room():
                    continue
                raise

    def _write_all(self, data: bytes | memoryview) -> None:
        assert self._fd is not None
        view = memoryview(data).cast("B")
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self.size += n

    def _undo(self, size: int) -> None:
        """The file back to ``size`` bytes after a partial write; if even that fails, the file is
        closed as it is (its last record cut) so that nothing is appended after the cut."""
        if self._fd is None or self.size == size:
            return
        try:
            os.ftruncate(self._fd, size)
            os.lseek(self._fd, size, os.SEEK_SET)
            self.size = size
        except OSError as e:
            log.error("cannot undo a partial write to %s (%s): closing it with its last record cut", self.path, e)
            fd, part = self._fd, self.path
            self._fd, self.path = None, None
            os.close(fd)
            if part is not None:
                with contextlib.suppress(OSError):
                    os.replace(part, part.with_name(part.name[: -len(".part")]))

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
        """Close the open file: fsync, rename to its final name, hand it to ``on_closed`` and
        the compressor, apply retention."""
        if self._fd is None or self.path is None:
            return None
        fd, part = self._fd, self.path
        self._fd, self.path = None, None
        try:
            if self.fsync:
                os.fsync(fd)
        except OSError as e:  # the data may be incomplete; the file is closed and named all the same
            self._count("fsync_errors")
            self._warn("fsync", "fsync of %s failed: %s", part, e)
        finally:
            os.close(fd)
        final = part.with_name(part.name[: -len(".part")])
        os.replace(part, final)
        if self.fsync:
            fsync_dir(self.directory)
        self.closed_files += 1
        final = self._closed(final)
        self.retain()
        return final

    def _closed(self, final: Path) -> Path:
        if self.on_closed is not None:
            try:
                final = self.on_closed(final)
            except Exception as e:
                self._warn("on_closed", "after closing %s: %s", final, e)
        if self.compressor is not None and final.name.endswith(f".{self.ext}"):
            self.compressor.submit(final)
        return final

    # ---- retention ----

    def free_deficit(self) -> int:
        """Bytes to free for the file system to hold the free space the policy asks for."""
        p = self.policy
        if not p.keeps_free:
            return 0
        st = os.statvfs(self.directory)
        free = st.f_bavail * st.f_frsize
        want = max(p.retain_free_bytes, int(st.f_blocks * st.f_frsize * p.retain_free_percent / 100.0))
        return max(0, want - free)

    def make_room(self) -> bool:
        """Free-space retention now (at most once a second); whether it removed anything."""
        now = time.monotonic()
        if not self.policy.keeps_free or now - self._free_checked < FREE_CHECK_SECONDS:
            return False
        self._free_checked = now
        try:
            short = self.free_deficit() > 0
        except OSError:
            return False
        return bool(short and self.retain())

    def check(self) -> None:
        """The periodic part (the sink's tick): free space every second, everything every minute."""
        if self.policy.retains and time.monotonic() - self._retained_at >= RETAIN_SECONDS:
            self.retain()
        else:
            self.make_room()

    def retain(self) -> list[Path]:
        """Remove the oldest closed groups beyond the count, bytes and age limits, then while the
        file system has less free space than asked for. Returns the files removed."""
        p = self.policy
        self._retained_at = time.monotonic()
        if not p.retains:
            return []
        removed: list[Path] = []
        why: Counter[str] = Counter()
        freed = 0
        with self._lock:
            open_base = self.path.with_name(self.path.name[: -len(".part")]) if self.path is not None else None
            groups = [g for g in self.groups() if not g.is_open and g.base != open_base]
            total = sum(g.size for g in groups)
            now = time.time()
            while groups:
                g = groups[0]
                if p.retain_files > 0 and len(groups) > p.retain_files:
                    why["files"] += 1
                elif p.retain_bytes > 0 and total > p.retain_bytes:
                    why["bytes"] += 1
                elif p.retain_seconds > 0 and now - g.mtime > p.retain_seconds:
                    why["age"] += 1
                else:
                    break
                removed += self._remove(g)
                freed += g.size
                total -= g.size
                groups.pop(0)
            try:
                deficit = self.free_deficit()
            except OSError:
                deficit = 0
            short, gone = deficit, 0
            while groups and short > 0 and gone < deficit:
                g = groups.pop(0)
                removed += self._remove(g)
                why["free space"] += 1
                freed += g.size
                gone += g.used
                short = self.free_deficit()  # others (another worker) free space too
            self._c["removed_files"] += len(removed)
            self._c["removed_bytes"] += freed
        if removed:
            log.info(
                "removed %d files (%d bytes) of %s-w%d in %s (%s)", len(removed), freed, self.prefix, self.worker,
                self.directory, ", ".join(f"{k}: {v}" for k, v in why.items()),
                extra={"fields": {"directory": str(self.directory), "removed_files": len(removed),
                                  "removed_bytes": freed}},
            )
        if short > 0 and not groups:
            self._warn("free", "%s: %d bytes short of the free space asked for, and no closed file of %s-w%d "
                       "left to remove", self.directory, short, self.prefix, self.worker)
        return removed

    def _remove(self, g: FileGroup) -> list[Path]:
        out = []
        for path in g.paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                out.append(path)
        return out

    # ---- compression, counters ----

    def _compressed(self, src: Path, out: Path, size_in: int, size_out: int) -> None:
        with self._lock:
            self._c["compressed_files"] += 1
            self._c["compressed_bytes_in"] += size_in
            self._c["compressed_bytes_out"] += size_out

    def wait_compressed(self, timeout: float = COMPRESS_WAIT_SECONDS) -> bool:
        """Wait for the pending compressions (at close); the rest is left to the next start."""
        if self.compressor is None:
            return True
        done = self.compressor.wait(timeout)
        if not done:
            log.warning("%s: %d files left to compress at the next start", self.directory, self.compressor.pending())
            self.compressor.stop()
        return done

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._c[key] += n

    def _warn(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -1e18) >= WARN_SECONDS:
            self._warned[key] = now
            log.warning(msg, *args)

    def stats(self) -> dict[str, int]:
        """What the forwarder's counters show of the files (removed, compressed, errors)."""
        with self._lock:
            out = {k: int(self._c[k]) for k in ("removed_files", "removed_bytes", "write_errors", "fsync_errors")}
            if self.compressor is not None:
                for k in ("compressed_files", "compressed_bytes_in", "compressed_bytes_out"):
                    out[k] = int(self._c[k])
        if self.compressor is not None:
            out["compress_pending"] = self.compressor.pending()
            out["compress_errors"] = self.compressor.errors
        return out


class RollingOutput:
    """``tick``, ``reopen``, ``close`` and ``stats`` of a sink that writes through a RollingFile
    (``self.files``): rotation on time when due, retention checks, a new file on SIGHUP, the last
    file closed (fsynced and renamed) at the end, its compression waited for."""

    files: RollingFile

    def tick(self, now: float) -> None:
        if self.files.due():
            self.files.close()
        self.files.check()

    def reopen(self) -> None:
        self.files.close()

    def close(self) -> None:
        try:
            self.files.close()
        finally:
            self.files.wait_compressed()

    def stats(self) -> dict[str, int]:
        return self.files.stats()
