"""Compression of closed output files on a background thread (pcap and JSON lines alike).

A closed file ``F`` is compressed to ``F.gz``: written as ``F.gz.part`` (mode 0640), fsynced,
renamed to ``F.gz`` (with ``F``'s modification time), then ``F`` is removed. The last two steps
run under the writer's retention lock, and only if ``F`` still exists: retention may have
removed ``F`` meanwhile, and then the half-made ``.part`` is removed instead. Sidecar files keep
the uncompressed name (``F.idx`` beside ``F.gz``). A crash leaves ``F`` whole and maybe a
``F.gz.part``, which the next start removes before compressing ``F`` again; a crash between the
rename and the unlink leaves ``F`` beside a complete ``F.gz``, and the next start removes ``F``.

The thread runs at a lower scheduling priority (nice 10) so that the receiver's own threads
come first; the writer never waits for it (a queue of paths; ``pending`` says how long it is).
zlib releases the GIL while it compresses.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .filemodes import create_private, fsync_dir

log = logging.getLogger("vxmirror.forwarders.compress")

SUFFIX = {"gzip": ".gz"}  # compress setting -> suffix of the compressed file
CHUNK = 1 << 20
NICE = 10


def compressed_name(path: Path, algo: str) -> Path:
    return path.with_name(path.name + SUFFIX[algo])


def compress_file(path: Path, algo: str, level: int, lock: threading.Lock) -> tuple[Path, int, int] | None:
    """Compress ``path`` (see the module doc). Returns (the compressed file, bytes in, bytes out),
    or None when ``path`` was removed meanwhile (by retention)."""
    out = compressed_name(path, algo)
    part = out.with_name(out.name + ".part")
    with contextlib.suppress(FileNotFoundError):
        part.unlink()  # left by a crash
    st = os.stat(path)
    fd = create_private(part)
    try:
        with os.fdopen(fd, "wb") as raw, open(path, "rb") as src:
            with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, compresslevel=level,
                               mtime=int(st.st_mtime)) as gz:
                while chunk := src.read(CHUNK):
                    gz.write(chunk)
            raw.flush()
            os.fsync(raw.fileno())
            size_out = raw.tell()
        os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns))
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    with lock:
        if not path.exists():  # removed by retention while we compressed it
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            return None
        os.replace(part, out)
        path.unlink()
    fsync_dir(path.parent)
    return out, st.st_size, size_out


def open_closed(path: Path) -> BinaryIO:
    """Open a closed output file by its uncompressed name ``F``: ``F`` itself, or ``F.gz`` when
    it was compressed (read as the uncompressed bytes; positions in a sidecar index refer to
    those). Raises FileNotFoundError when neither exists."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        pass
    return gzip.open(compressed_name(path, "gzip"), "rb")  # type: ignore[return-value]


class BackgroundCompressor:
    """One thread that compresses the closed files submitted to it, oldest first."""

    def __init__(self, algo: str, level: int, lock: threading.Lock, name: str,
                 on_done: Callable[[Path, Path, int, int], None] | None = None) -> None:
        if algo not in SUFFIX:
            raise ValueError(f"unknown compression {algo!r}")
        self.algo = algo
        self.level = level
        self.lock = lock  # the writer's retention lock
        self.name = name
        self.on_done = on_done
        self._q: collections.deque[Path] = collections.deque()
        self._cv = threading.Condition()
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.seconds = 0.0  # spent compressing (wall clock of the thread)

    def submit(self, path: Path) -> None:
        with self._cv:
            self._q.append(path)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"compress-{self.name}", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def pending(self) -> int:
        with self._cv:
            return len(self._q) + int(self._busy)

    def wait(self, timeout: float) -> bool:
        """Until every submitted file is done (True) or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._q or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def stop(self) -> None:
        """No further file is started (the one being compressed finishes)."""
        with self._cv:
            self._stop = True
            self._q.clear()
            self._cv.notify_all()

    def _run(self) -> None:
        with contextlib.suppress(OSError):  # below the receiver's threads (Linux: per thread)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        while True:
            with self._cv:
                while not self._q and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                path = self._q.popleft()
                self._busy = True
            t0 = time.monotonic()
            try:
                done = compress_file(path, self.algo, self.level, self.lock)
            except FileNotFoundError:
                done = None  # removed before we began
            except OSError as e:
                done = None
                self.errors += 1
                log.error("cannot compress %s: %s (left uncompressed)", path, e)
            self.seconds += time.monotonic() - t0
            if done is not None and self.on_done is not None:
                self.on_done(path, *done)
            with self._cv:
                self._busy = False
                self._cv.notify_all()
