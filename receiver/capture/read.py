"""Offline analysis of capture files: the engine over pcap/pcapng files, as a library call.

    for record in read_records(["trace.pcap"]):
        ...
    for batch in Analysis(["trace.pcap"]).batches():   # RecordBatch: the records as JSON lines
        out.write(batch.data)

``Analysis`` is the same with the counters kept for a summary (``vxmirror read`` prints it).
Several files are read as one stream (one flow table), in the order given.

A file that fails (not a capture, a read error part-way) never costs the records of the others:
the flows still open are emitted (``end_of_input``) before the error is raised, or, with
``keep_going``, the file is logged, listed in ``errors`` and skipped, and the rest are read.

Reading can be stopped from outside (``stop``, an event: a signal handler sets it for ``vxmirror
read``): after the batch in hand, the flows still open end with ``shutdown`` and nothing more is
read, so an interrupted run keeps the records of what it read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.engine import EngineConfig
from ..engine import BatchResult, Engine, Prepared
from ..flows.record import FlowRecord
from ..flows.recordbatch import RecordBatch
from ..packets import PacketBatch
from . import STDIN, Capture, CaptureError, open_capture
from .prefetch import Prefetcher
from .readahead import prepared_batches

Progress = Callable[[str, int, int, int], None]  # (path, bytes done, bytes total, packets so far)
log = logging.getLogger("vxmirror.read")


@dataclass
class Analysis:
    paths: list[str | os.PathLike[str]]
    config: EngineConfig = field(default_factory=EngineConfig)
    labeler: Callable[[int], dict[str, Any] | None] | None = None
    sensor: str | None = None
    batch_size: int = 32768  # offline batches point into the mapped file: larger ones amortise numpy calls
    progress: Progress | None = None
    # called with each batch and its result; both view memory that is reused for later batches:
    # valid during the call only (copy what is kept)
    on_batch: Callable[[PacketBatch, BatchResult], None] | None = None
    capture_counters: Counter[str] = field(default_factory=Counter)
    engine: Engine | None = None
    prefetch: Prefetcher | None = None  # maps the files and faults them in ahead (made here when None)
    keep_going: bool = False  # a file that fails is logged, listed in ``errors`` and skipped
    errors: list[str] = field(default_factory=list)  # the files that failed, and why (keep_going)
    stop: threading.Event | None = None  # once set, reading stops after the batch in hand (``shutdown``)
    stopped: bool = field(default=False, init=False)  # reading ended because ``stop`` was set
    _packets: int = field(default=0, init=False, repr=False)  # packets so far (for progress)

    def records(self) -> Iterator[FlowRecord]:
        """Every flow record of the files, as dicts (see ``batches``)."""
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[RecordBatch]:
        """Every flow record of the files, as they come out of the engine (encoded JSON lines,
        no dict per record); open flows end with ``end_of_input`` (``shutdown`` when ``stop`` was
        set). A file that fails raises CaptureError (or OSError) after the flows still open are
        emitted, unless ``keep_going``."""
        self.engine = engine = Engine(self.config, self.labeler, self.sensor)
        self._packets = 0
        self.stopped = False
        prefetch = self.prefetch if self.prefetch is not None else Prefetcher(self.paths)
        ahead: _Opening | None = None  # the next file, opened while this one is read
        try:
            for i, path in enumerate(self.paths):
                if self._stopping():
                    break
                opening = ahead if ahead is not None else _Opening(i, path, self, prefetch)
                ahead = _Opening(i + 1, self.paths[i + 1], self, prefetch) if i + 1 < len(self.paths) else None
                try:
                    yield from self._file(opening, engine, prefetch)
                except (CaptureError, OSError) as exc:
                    self.capture_counters["failed_files"] += 1
                    if not self.keep_going:
                        yield engine.finish("end_of_input")  # what was read is not lost
                        raise
                    message = str(exc) if isinstance(exc, CaptureError) else f"{path}: {exc.strerror or exc}"
                    log.error("%s (file skipped)", message)
                    self.errors.append(message)
        finally:
            if ahead is not None:
                ahead.discard()
            if self.prefetch is None:
                prefetch.close()
        yield engine.finish("shutdown" if self.stopped else "end_of_input")

    def _stopping(self) -> bool:
        if not self.stopped and self.stop is not None and self.stop.is_set():
            self.stopped = True
            log.warning("reading stopped after %s packets: the flows still open end as 'shutdown'",
                        f"{self._packets:,}")
        return self.stopped

    def _file(self, opening: _Opening, engine: Engine, prefetch: Prefetcher) -> Iterator[RecordBatch]:
        i, path = opening.i, opening.path
        cap, batches = opening.opened()
        total = _file_size(path)
        try:
            # (closed before the file: the threads reading ahead stop first, also when reading stops early)
            with contextlib.closing(opening):
                for batch, prepared in batches:
                    if batch.count:  # (the pages before this batch may be dropped)
                        prefetch.reached(i, int(batch.start[0]))
                    result = engine.process(batch, prepared)
                    if self.on_batch is not None:
                        self.on_batch(batch, result)
                    self._packets += batch.count
                    if self.progress is not None:
                        self.progress(str(path), _done_bytes(cap, batch, total), total, self._packets)
                    if result.records:
                        yield result.records
                    if self._stopping():
                        return
            if pages := cap.vanished_pages():  # (cut and grown again between two checks)
                raise CaptureError(f"{path}: the file was truncated while being read ({pages} pages of it read "
                                   f"as zeros): its records may be incomplete")
        finally:
            self.capture_counters.update({k: v for k, v in cap.counters.items() if v})
            cap.close()

    def summary(self) -> dict[str, int]:
        """Engine counters (packets, decoded, drops by reason, flows) and capture-file counters."""
        out = dict(self.engine.counters()) if self.engine else {}
        for k, v in self.capture_counters.items():
            out[f"capture_{k}"] = v
        return out


_Batches = Generator[tuple[PacketBatch, Prepared], None, None]


class _Opening:
    """File ``i`` opened, and its first batch read, on a thread of its own: started when the file
    before it starts, so what a new file's reading thread takes to deliver its first batch (1-2 ms,
    most of the cost of a small file after the first) passes while that file is read."""

    def __init__(self, i: int, path: str | os.PathLike[str], analysis: Analysis, prefetch: Prefetcher) -> None:
        self.i, self.path = i, path
        self.cap: Capture | None = None
        self.batches: _Batches | None = None
        self.first: tuple[PacketBatch, Prepared] | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._discarded = self._done = False
        self._thread = threading.Thread(target=self._open, args=(analysis.config, analysis.batch_size, prefetch),
                                        name="vxmirror-open", daemon=True)
        self._thread.start()

    def _open(self, config: EngineConfig, batch_size: int, prefetch: Prefetcher) -> None:
        try:  # (the mapping as the prefetcher made it; the reader is not there yet: nothing dropped)
            self.cap = open_capture(self.path, prefetch.mapping(self.i, advance=False))
            self.batches = prepared_batches(self.cap, config, batch_size)
            self.first = next(self.batches, None)
        except BaseException as exc:  # raised where the file is read, as if it had been opened there
            self.error = exc
        with self._lock:
            self._done = True
            if self._discarded:  # (reading ended before this file: nobody will take it)
                self._close()

    def opened(self) -> tuple[Capture, Iterator[tuple[PacketBatch, Prepared]]]:
        """The capture and its batches (the first one included); raises what opening it raised."""
        self._thread.join()
        if self.cap is None:
            assert self.error is not None
            raise self.error
        return self.cap, self._batches()

    def _batches(self) -> Iterator[tuple[PacketBatch, Prepared]]:
        if self.error is not None:
            raise self.error
        assert self.batches is not None
        if self.first is not None:
            yield self.first
            yield from self.batches

    def close(self) -> None:
        """The file's batches are done with (read to the end or not): its reading threads stop."""
        if self.batches is not None:
            self.batches.close()

    def discard(self) -> None:
        """Reading ended before this file: close what was opened (now, or when the thread is done:
        a FIFO with no writer may keep it waiting)."""
        with self._lock:
            self._discarded = True
            if self._done:
                self._close()

    def _close(self) -> None:
        self.close()
        if self.cap is not None:
            self.cap.close()


def read_records(
    paths: Iterable[str | os.PathLike[str] | Path] | str | os.PathLike[str],
    config: EngineConfig | None = None,
) -> Iterator[FlowRecord]:
    """Flow records of one or several capture files (pcap, pcapng, gzip-compressed or not)."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    return Analysis(list(paths), config or EngineConfig()).records()


def _file_size(path: str | os.PathLike[str]) -> int:
    """Bytes of a regular file; 0 for a stream (standard input, a pipe): no progress fraction."""
    if os.fspath(path) == STDIN:
        return 0
    try:
        st = os.stat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _done_bytes(cap: Capture, batch: PacketBatch, total: int) -> int:
    if cap.compressed or cap.format != "pcap" or not batch.count:
        return -1
    return min(total, int(batch.start[-1]) + int(batch.caplen[-1]))
