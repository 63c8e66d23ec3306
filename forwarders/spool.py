"""A bounded on-disk spool of record batches, replayed oldest first.

Each batch is one file ``<seq>-<count>.jsonl`` (one JSON record per line),
written to ``.tmp``, fsynced and renamed, so a crash leaves either the whole
batch or nothing. Files survive a restart; a new spool on the same directory
picks them up in sequence order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import orjson

from receiver.flows.record import FlowRecord

log = logging.getLogger("vxmirror.forwarders.spool")

_NAME = re.compile(r"^(\d{12})-(\d+)\.jsonl$")


@dataclass(frozen=True)
class SpoolEntry:
    path: Path
    seq: int
    count: int
    size: int


class SpoolFull(Exception):
    """The batch does not fit under ``max_bytes``."""


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._entries: list[SpoolEntry] = []
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
            e = SpoolEntry(p, int(m.group(1)), int(m.group(2)), p.stat().st_size)
            self._entries.append(e)
        self._entries.sort(key=lambda e: e.seq)
        self.bytes = sum(e.size for e in self._entries)
        self.records = sum(e.count for e in self._entries)
        if self._entries:
            self._next_seq = self._entries[-1].seq + 1

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, lines: list[bytes]) -> SpoolEntry:
        """Append one batch (serialised records). Raises SpoolFull or OSError."""
        data = b"\n".join(lines) + b"\n"
        if self.max_bytes <= 0 or self.bytes + len(data) > self.max_bytes:
            raise SpoolFull(f"spool at {self.bytes} of {self.max_bytes} bytes")
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / f"{seq:012d}-{len(lines)}.jsonl"
        self._write(path, data)
        e = SpoolEntry(path, seq, len(lines), len(data))
        self._entries.append(e)
        self.bytes += e.size
        self.records += e.count
        return e

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def oldest(self) -> SpoolEntry | None:
        return self._entries[0] if self._entries else None

    def load(self, entry: SpoolEntry) -> tuple[list[FlowRecord], list[bytes], int]:
        """Records of an entry, their lines, and how many lines were unreadable."""
        records: list[FlowRecord] = []
        lines: list[bytes] = []
        bad = 0
        for line in entry.path.read_bytes().splitlines():
            if not line:
                continue
            try:
                records.append(orjson.loads(line))
                lines.append(line)
            except orjson.JSONDecodeError:
                bad += 1
        return records, lines, bad

    def remove(self, entry: SpoolEntry) -> None:
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        self._forget(entry)

    def replace(self, entry: SpoolEntry, lines: list[bytes]) -> SpoolEntry:
        """Rewrite an entry with fewer records (after a partial send), keeping its place."""
        if not lines:
            self.remove(entry)
            return entry
        data = b"\n".join(lines) + b"\n"
        path = self.directory / f"{entry.seq:012d}-{len(lines)}.jsonl"
        self._write(path, data)
        if path != entry.path:
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
        new = SpoolEntry(path, entry.seq, len(lines), len(data))
        i = self._entries.index(entry)
        self._entries[i] = new
        self.bytes += new.size - entry.size
        self.records += new.count - entry.count
        return new

    def _forget(self, entry: SpoolEntry) -> None:
        try:
            self._entries.remove(entry)
        except ValueError:
            return
        self.bytes -= entry.size
        self.records -= entry.count
