"""JSON-lines record sink (kind ``jsonl``): the embedded default.

One FlowRecord per line (the batch's JSON lines, written as they come) in rolling files under ``<data_dir>/flows/``
(forwarders.rolling: ``.part`` then fsync and rename, rotation by size and
age, retention by count, bytes, age and free space). With ``compress = "gzip"``
(or the older ``gzip = true``) each closed file is compressed to ``.jsonl.gz`` on
a background thread (forwarders.compress) and the plain file removed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from receiver.config.schema import opt
from receiver.flows.recordbatch import RecordBatch

from .api import Health, RecordSink, SendError, SinkContext
from .rolling import RetentionConfig, RollingFile, RollingOutput, RollPolicy

MiB = 1024 * 1024


@dataclass
class JsonlConfig(RetentionConfig):
    directory: str = opt("", "output directory (default: <data_dir>/flows)")
    rotate_bytes: int = opt(64 * MiB, "start a new file before this size is exceeded", min=1024)
    rotate_seconds: float = opt(3600.0, "start a new file after this many seconds (0: never by age)", min=0)
    gzip: bool = opt(False, 'the same as compress = "gzip" (older name)')
    prefix: str = opt("flows", "file name prefix")
    fsync: bool = opt(True, "fsync each file before it gets its final name")


def _whole_lines(path: Path) -> int:
    data = path.read_bytes()
    return data.rfind(b"\n") + 1


class JsonlSink(RollingOutput, RecordSink):
    kind = "jsonl"
    config_class = JsonlConfig

    def __init__(self, config: JsonlConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.directory = Path(config.directory) if config.directory else Path(context.data_dir) / "flows"
        policy = RollPolicy.of(config)
        self.files = RollingFile(
            self.directory,
            config.prefix,
            "jsonl",
            context.worker,
            policy,
            recover=_whole_lines,
            fsync=config.fsync,
        )
        self._left = 0  # bytes of the payload being sent not yet written

    def encode(self, batch: RecordBatch) -> bytes:
        return batch.data  # one orjson line per record already

    def send(self, payload: bytes, count: int) -> None:
        self._left = len(payload)
        try:
            self._send(payload)
        except SendError as e:
            # Lines already written (before a rotation) count as accepted: they are not resent.
            written = len(payload) - self._left
            e.accepted = payload.count(b"\n", 0, written)
            raise

    def _send(self, payload: bytes) -> None:
        view = memoryview(payload)
        self._left = len(view)
        limit = self.config.rotate_bytes
        while view:
            if self.files.due() or (self.files.is_open and self.files.size >= limit):
                self._rotate()
            room = limit - self.files.size if self.files.is_open else limit
            if len(view) <= room:
                self._write(view)
                return
            cut = payload.rfind(b"\n", len(payload) - len(view), len(payload) - len(view) + room) + 1
            cut -= len(payload) - len(view)
            if cut <= 0:
                if self.files.is_open and self.files.size > 0:
                    self._rotate()
                    continue
                nl = payload.find(b"\n", len(payload) - len(view))  # one line longer than a file
                cut = (nl + 1 - (len(payload) - len(view))) if nl >= 0 else len(view)
            self._write(view[:cut])
            view = view[cut:]
            self._left = len(view)
            if view:
                self._rotate()

    def _rotate(self) -> None:
        try:
            self.files.close()
        except OSError as e:
            raise SendError(f"closing a file in {self.directory}: {e.strerror or e}", retryable=True) from None

    def _write(self, data: memoryview) -> None:
        try:
            self.files.write(data)  # whole or not at all (a partial write is undone)
        except OSError as e:
            # Disk full or a vanished directory may clear: retry, then spool.
            raise SendError(f"writing {self.directory}: {e.strerror or e}", retryable=True) from None

    def health_check(self) -> Health:
        ok = os.access(self.directory, os.W_OK)
        return Health(ok, "" if ok else f"{self.directory} not writable")
