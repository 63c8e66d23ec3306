"""A bounded on-disk spool of record batches, replayed oldest first.

Each batch is one file ``<seq>-<count>.jsonl`` (the records' JSON lines, as they travel in a
RecordBatch), written to ``.tmp`` and renamed, so a crash of the process leaves either the
whole batch or nothing. A batch pushed with ``sync=True`` is fsynced before the rename; one
pushed with ``sync=False`` (the caller cannot wait for the disk) is fsynced by a later
``sync()``: until then a crash of the machine (not of the process) can lose it. Files survive
a restart; a new spool on the same directory picks them up in sequence order.

One directory per writer: the service's worker 0 spools in ``spool/<forwarder>/`` itself, worker k
in ``spool/<forwarder>/w<k>/`` (``worker_directory``): two spools on one directory would pick the
same sequence numbers and overwrite each other's files. At start, worker 0 adopts the directories
of workers that no longer exist (the service restarted with fewer workers): their files are moved
into its own, after its own batches (``adopt``).

Thread-safe: batches may be pushed from any thread while the sender replays; a push holds the
lock only to reserve its place (sequence number and bytes), not while it writes.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from receiver.flows.recordbatch import RecordBatch

log = logging.getLogger("vxmirror.forwarders.spool")

_NAME = re.compile(r"^(\d{12})-(\d+)\.jsonl$")
_WORKER = re.compile(r"^w(\d+)$")


def worker_directory(base: Path, worker: int) -> Path:
    """The spool directory of ``worker`` under a forwarder's ``base`` (``base`` itself for worker 0,
    the layout of a single-worker service)."""
    return base if worker == 0 else base / f"w{worker}"


def orphan_directories(base: Path, workers: int) -> list[Path]:
    """The spool directories under ``base`` of workers numbered ``workers`` or above."""
    if not base.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in base.iterdir() if (m := _WORKER.match(p.name)) and p.is_dir()]
    return [p for k, p in sorted(found) if k >= max(1, workers)]


@dataclass(frozen=True, order=True)
class SpoolEntry:
    seq: int
    path: Path = field(compare=False)
    count: int = field(compare=False)
    size: int = field(compare=False)


class SpoolFull(Exception):
    """The batch does not fit under ``max_bytes``."""


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: list[SpoolEntry] = []  # by seq
        self._unsynced: list[Path] = []
        self.bytes = 0
        self.records = 0
        self._next_seq = 1
        if max_bytes > 0:
            directory.mkdir(parents=True, exist_ok=True)
            self._scan()

    def _scan(self) -> None:
        for p in self.directory.iterdir():
            if p.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()
                continue
            m = _NAME.match(p.name)
            if not m:
                continue
            self._entries.append(SpoolEntry(int(m.group(1)), p, int(m.group(2)), p.stat().st_size))
        self._entries.sort()
        self.bytes = sum(e.size for e in self._entries)
        self.records = sum(e.count for e in self._entries)
        if self._entries:
            self._next_seq = self._entries[-1].seq + 1

    def __len__(self) -> int:
        return len(self._entries)

    def adopt(self, other: Path) -> int:
        """Move the batches of another spool directory (of a worker that no longer exists) into this
        one, oldest first, numbered after this spool's own; remove the directory. Call before the
        spool is used. Returns how many records were adopted. A crash in the middle leaves each
        file in one directory or the other, and the next start adopts the rest."""
        if self.max_bytes <= 0:
            return 0
        files = []
        for p in other.iterdir():
            m = _NAME.match(p.name)
            if m:
                files.append((int(m.group(1)), int(m.group(2)), p))
            elif p.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()
        n = 0
        for _, count, p in sorted(files):
            seq = self._next_seq
            e = SpoolEntry(seq, self.directory / f"{seq:012d}-{count}.jsonl", count, p.stat().st_size)
            os.rename(p, e.path)
            self._next_seq += 1
            self._entries.append(e)
            self.bytes += e.size
            self.records += count
            n += count
        with contextlib.suppress(OSError):
            other.rmdir()
        if files:
            _fsync_dir(self.directory)
        return n

    def push(self, data: bytes | memoryview, count: int, *, sync: bool = True) -> SpoolEntry:
        """Append one batch: ``count`` records as JSON lines, each ending in a newline.
        Raises SpoolFull or OSError."""
        size = len(data)
        with self._lock:
            if self.max_bytes <= 0 or self.bytes + size > self.max_bytes:
                raise SpoolFull(f"spool at {self.bytes} of {self.max_bytes} bytes")
            seq = self._next_seq
            self._next_seq += 1
            self.bytes += size  # reserved while the file is written
            self.records += count
        e = SpoolEntry(seq, self.directory / f"{seq:012d}-{count}.jsonl", count, size)
        try:
            self._write(e.path, data, sync)
        except BaseException:
            with self._lock:
                self.bytes -= size
                self.records -= count
            raise
        with self._lock:
            bisect.insort(self._entries, e)
            if not sync:
                self._unsynced.append(e.path)
        return e

    def _write(self, path: Path, data: bytes | memoryview, sync: bool) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def sync(self) -> int:
        """fsync the files pushed with ``sync=False`` (and the directory); returns how many.
        Files replayed and removed in the meantime are skipped."""
        with self._lock:
            paths, self._unsynced = self._unsynced, []
        for p in paths:
            try:
                fd = os.open(p, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if paths:
            _fsync_dir(self.directory)
        return len(paths)

    def oldest(self) -> SpoolEntry | None:
        with self._lock:
            return self._entries[0] if self._entries else None

    def load(self, entry: SpoolEntry) -> tuple[RecordBatch, int]:
        """The records of an entry, and how many of its lines are unreadable (or missing: a file
        cut short by a crash of the machine). Raises OSError."""
        lines = [ln for ln in entry.path.read_bytes().split(b"\n") if ln]
        try:
            batch = RecordBatch.from_lines(lines)
        except (ValueError, AttributeError, TypeError):  # a line that is not a JSON object
            batch = RecordBatch.from_lines([ln for ln in lines if _is_object(ln)])
        return batch, max(0, entry.count - len(batch))

    def remove(self, entry: SpoolEntry) -> None:
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        self._forget(entry)

    def replace(self, entry: SpoolEntry, batch: RecordBatch) -> SpoolEntry:
        """Rewrite an entry with fewer records (after a partial send), keeping its place."""
        if not batch:
            self.remove(entry)
            return entry
        new = SpoolEntry(entry.seq, self.directory / f"{entry.seq:012d}-{len(batch)}.jsonl", len(batch),
                         len(batch.data))
        self._write(new.path, batch.data, True)
        if new.path != entry.path:
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
        with self._lock:
            i = bisect.bisect_left(self._entries, entry)
            if i < len(self._entries) and self._entries[i].seq == entry.seq:
                self._entries[i] = new
                self.bytes += new.size - entry.size
                self.records += new.count - entry.count
        return new

    def _forget(self, entry: SpoolEntry) -> None:
        with self._lock:
            i = bisect.bisect_left(self._entries, entry)
            if i >= len(self._entries) or self._entries[i].seq != entry.seq:
                return
            old = self._entries.pop(i)
            self.bytes -= old.size
            self.records -= old.count


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False
